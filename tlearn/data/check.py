"""`check`: what in an image folder needs attention before training on it.

Built on the cached per-file facts of files.py, so a repeated check, and the check
that `fit` runs, cost almost nothing.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import TlearnError
from ..settings import CheckSettings, default_cache_root, settings_from
from .files import FileFacts, inspect_files

# A near-duplicate differs in at most --near-threshold of the 256 gradient bits and, on
# average, in at most NEAR_COLOUR_DIFFERENCE of 255 per colour thumbnail pixel: on the weather
# set that finds resized, re-encoded and slightly cropped copies and no pair of different photos.
NEAR_COLOUR_DIFFERENCE = 12.0
_EXTENSIONS = {
    "JPEG": {".jpg", ".jpeg", ".jpe", ".jfif"}, "MPO": {".jpg", ".jpeg", ".mpo"}, "PNG": {".png"},
    "GIF": {".gif"}, "BMP": {".bmp", ".dib"}, "WEBP": {".webp"},
}


@dataclass(frozen=True)
class Finding:
    path: Path
    detail: str

@dataclass
class DataCheck:
    """What `check_folder` found. Paths are absolute; `to_dict` makes them relative to `root`."""

    root: Path
    class_names: list[str]
    class_counts: dict[str, int]
    facts: dict[Path, FileFacts] = field(repr=False)
    labels: dict[Path, str] = field(repr=False)
    unreadable: list[Finding]
    wrong_extension: list[Finding]
    converted: list[Finding]
    tiny: list[Finding]
    extreme_aspect: list[Finding]
    duplicates_within_class: list[list[Path]]
    duplicates_across_classes: list[list[Path]]
    near_duplicates: list[list[Path]]
    settings: dict

    @property
    def imbalance(self) -> float:
        counts = [count for count in self.class_counts.values() if count]
        return max(counts) / min(counts) if counts else 0.0

    @property
    def needs_attention(self) -> bool:
        return any(self._sections().values())

    def _sections(self) -> dict[str, list]:
        return {
            "unreadable": self.unreadable, "wrong_extension": self.wrong_extension, "converted": self.converted,
            "tiny": self.tiny, "extreme_aspect": self.extreme_aspect,
            "duplicates_within_class": self.duplicates_within_class,
            "duplicates_across_classes": self.duplicates_across_classes, "near_duplicates": self.near_duplicates,
        }

    def relative(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def to_dict(self) -> dict:
        def encode(item):
            if isinstance(item, Finding):
                return {"path": self.relative(item.path), "detail": item.detail}
            return [self.relative(path) for path in item]

        return {
            "root": str(self.root), "images": sum(self.class_counts.values()), "classes": self.class_counts,
            "imbalance": round(self.imbalance, 3), "settings": self.settings,
            **{name: [encode(item) for item in items] for name, items in self._sections().items()},
            "needs_attention": self.needs_attention,
        }

    def split_groups(self) -> list[set[Path]]:
        """Exact and near-duplicate groups of one class merged where they share a file: the
        sets of images that a split must keep together."""
        merged: list[set[Path]] = []
        for group in self.duplicates_within_class + self.near_duplicates:
            joined = set(group)
            for other in [m for m in merged if m & joined]:
                joined |= other
                merged.remove(other)
            merged.append(joined)
        return merged

    def summary(self) -> str:
        """One line, as `fit` prints it."""
        groups = len(self.split_groups())
        parts = [f"{sum(self.class_counts.values())} images", f"{len(self.class_names)} classes"]
        if self.unreadable:
            parts.append(f"{len(self.unreadable)} unreadable skipped")
        conflicting = sum(len(group) for group in self.duplicates_across_classes)
        if conflicting:
            parts.append(f"{conflicting} copies of images filed under two classes left out")
        parts.append(f"{groups} duplicate group{'s' if groups != 1 else ''} kept together")
        return ", ".join(parts)


def check_cache_file(root: Path, cache_dir: str | Path | None = None) -> Path:
    base = Path(cache_dir) if cache_dir is not None else default_cache_root()
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:20]
    return base / "check" / f"{key}.json"


def class_folders(root: Path, min_classes: int = 2) -> list[Path]:
    if not root.exists():
        raise TlearnError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise TlearnError(f"{root} is not a folder: give a folder with one sub-folder per class")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(folders) < min_classes:
        found = ", ".join(p.name for p in folders) or "none"
        plural = "s" if min_classes > 1 else ""
        raise TlearnError(
            f"{root} needs at least {min_classes} class sub-folder{plural} (found {found}): "
            "put each class's images in a folder named after the class"
        )
    return folders


def visible_files(folder: Path) -> list[Path]:
    """Files under `folder`, recursively, leaving out hidden files and folders."""
    return sorted(
        path for path in folder.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def check_folder(
    data_dir: str | Path,
    *,
    image_size: int = CheckSettings.image_size,
    near_threshold: int = CheckSettings.near_threshold,
    max_aspect_ratio: float = CheckSettings.max_aspect_ratio,
    min_classes: int = 2,
    cache_dir: str | Path | None = None,
) -> DataCheck:
    """Scan `data_dir` (one sub-folder per class) and report what needs attention.

    `image_size` is the training size: images under half of it on a side are `tiny`.
    `near_threshold` is how many of 256 hash bits a near-duplicate may differ in (negative:
    no near-duplicate search). File facts are cached in `cache_dir` (default
    $TLEARN_CACHE_DIR or ~/.cache/tlearn).
    """
    settings = settings_from(CheckSettings, locals())
    root = Path(data_dir)
    folders = class_folders(root, min_classes)
    labels = {path: folder.name for folder in folders for path in visible_files(folder)}
    facts = inspect_files(list(labels), check_cache_file(root, cache_dir))

    unreadable, wrong_extension, converted, tiny, extreme = [], [], [], [], []
    for path, fact in facts.items():
        if not fact.usable:
            unreadable.append(Finding(path, fact.error))
            continue
        if path.suffix.lower() not in _EXTENSIONS.get(fact.format, set()):
            wrong_extension.append(Finding(path, f"{fact.format} named {path.suffix or '(no extension)'}"))
        conversion = _conversion(fact)
        if conversion:
            converted.append(Finding(path, conversion))
        if min(fact.width, fact.height) < settings.image_size / 2:
            tiny.append(Finding(path, f"{fact.width}x{fact.height}, under half of {settings.image_size} px"))
        if max(fact.width, fact.height) > settings.max_aspect_ratio * min(fact.width, fact.height):
            extreme.append(Finding(path, f"{fact.width}x{fact.height}"))

    usable = [path for path in facts if facts[path].usable]
    by_hash: dict[str, list[Path]] = defaultdict(list)
    for path in usable:
        by_hash[facts[path].sha256].append(path)
    exact = [paths for paths in by_hash.values() if len(paths) > 1]
    across = [paths for paths in exact if len({labels[p] for p in paths}) > 1]
    within = [paths for paths in exact if len({labels[p] for p in paths}) == 1]
    near = _near_duplicate_groups(usable, facts, settings.near_threshold) if settings.near_threshold >= 0 else []

    counts = {folder.name: 0 for folder in folders}
    for path in usable:
        counts[labels[path]] += 1
    return DataCheck(
        root, [folder.name for folder in folders], counts, facts, labels, unreadable, wrong_extension,
        converted, tiny, extreme, within, across, near,
        asdict(settings),
    )


def _conversion(fact: FileFacts) -> str | None:
    notes = []
    if fact.frames > 1:
        notes.append(f"animated, {fact.frames} frames: first used")
    if fact.mode in ("L", "LA", "1", "I", "I;16", "F"):
        notes.append("grayscale")
    elif fact.mode in ("P", "PA"):
        notes.append("palette")
    elif fact.mode == "CMYK":
        notes.append("CMYK")
    if fact.has_alpha:
        notes.append("transparency (on white)")
    return ", ".join(notes) or None


def _near_duplicate_groups(paths, facts, threshold: int) -> list[list[Path]]:
    """Groups of different files showing the same picture (resized, re-encoded, cropped)."""
    if len(paths) < 2:
        return []
    hashes = np.stack([np.frombuffer(bytes.fromhex(facts[p].dhash), np.uint8) for p in paths])
    colours = np.stack([np.frombuffer(bytes.fromhex(facts[p].colours), np.uint8) for p in paths]).astype(np.int16)
    parent = list(range(len(paths)))

    def find(index):
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    for i in range(len(paths) - 1):  # row by row: memory stays O(n), not O(n^2) bytes x 32
        distances = np.bitwise_count(hashes[i + 1 :] ^ hashes[i]).sum(axis=1)
        for offset in np.nonzero(distances <= threshold)[0]:
            j = i + 1 + int(offset)
            if facts[paths[i]].sha256 == facts[paths[j]].sha256:
                continue  # exact duplicates are reported on their own
            if np.abs(colours[i] - colours[j]).mean() <= NEAR_COLOUR_DIFFERENCE:
                parent[find(i)] = find(j)
    groups: dict[int, list[Path]] = defaultdict(list)
    for index, path in enumerate(paths):
        groups[find(index)].append(path)
    return sorted(
        (sorted(group) for group in groups.values() if len({facts[p].sha256 for p in group}) > 1),
        key=lambda group: group[0],
    )


def format_check(check: DataCheck) -> str:
    """The report `tlearn check` prints: counts first, then each kind of finding."""
    counts = ", ".join(f"{name} {count}" for name, count in check.class_counts.items())
    lines = [
        f"{check.root}: {sum(check.class_counts.values())} images in {len(check.class_names)} classes ({counts})",
        f"Class imbalance (largest / smallest): {check.imbalance:.2f}",
    ]

    def section(title: str, findings: list[Finding]) -> None:
        if findings:
            lines.append(f"\n{title} ({len(findings)}):")
            width = max(len(check.relative(f.path)) for f in findings)
            lines.extend(f"  {check.relative(f.path):<{width}}  {f.detail}" for f in findings)

    def groups(title: str, found: list[list[Path]]) -> None:
        if found:
            lines.append(f"\n{title} ({len(found)} groups):")
            lines.extend("  " + " = ".join(check.relative(p) for p in group) for group in found)

    section("Cannot be used (skipped by fit)", check.unreadable)
    section("Content does not match the extension", check.wrong_extension)
    section("Converted to RGB when loaded", check.converted)
    section("Tiny images", check.tiny)
    section("Extreme aspect ratios", check.extreme_aspect)
    groups("Same image under two classes: a labelling error, left out by fit", check.duplicates_across_classes)
    groups("Exact duplicates within a class: kept in one subset by fit", check.duplicates_within_class)
    groups(f"Near-duplicates (threshold {check.settings['near_threshold']}): kept in one subset by fit",
           check.near_duplicates)
    lines.append("\n" + ("Needs attention: see above." if check.needs_attention else "No problems found."))
    return "\n".join(lines) + "\n"
