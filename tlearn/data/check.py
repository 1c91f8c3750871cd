"""`check`: what in an image folder needs attention before training on it.

Built on the cached per-file facts of files.py, so a repeated check, and the check
that `fit` runs, cost almost nothing.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..settings import FEW_IMAGES_PER_CLASS, CheckSettings, FitSettings, default_cache_root, settings_from
from .files import FileFacts, inspect_files
from .layout import DataLayout, find_layout
from .near_duplicates import hamming_pairs

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
    layout: DataLayout | None = field(default=None, repr=False)
    given: dict[Path, str] = field(default_factory=dict, repr=False)  # path -> subset its folder gives
    very_large: list[Finding] = field(default_factory=list)
    small_classes: list[Finding] = field(default_factory=list)  # path: the class's (training) folder
    missing_from_subsets: list[Finding] = field(default_factory=list)  # path: where the class folder should be
    leakage: list[list[Path]] = field(default_factory=list)  # pictures in more than one given subset
    subset_like_classes: list[Finding] = field(default_factory=list)  # see DataLayout.subset_like_classes

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
            "very_large": self.very_large, "small_classes": self.small_classes,
            "missing_from_subsets": self.missing_from_subsets, "leakage": self.leakage,
            "subset_like_classes": self.subset_like_classes,
        }

    @property
    def pre_split(self) -> bool:
        return self.layout is not None and self.layout.pre_split

    def images_per_subset(self) -> dict[str, int]:
        """Usable images in each given subset (empty unless pre-split)."""
        counts: dict[str, int] = defaultdict(int)
        for path, subset in self.given.items():
            counts[subset] += self.facts[path].usable
        return dict(counts)

    def describe_layout(self) -> str:
        """One line on a pre-split layout (which folders give which subset); "" otherwise."""
        return self.layout.describe(self.images_per_subset()) if self.layout is not None else ""

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
            "layout": self._layout_dict(), "needs_attention": self.needs_attention,
        }

    def _layout_dict(self) -> dict:
        if not self.pre_split:
            return {"kind": "class folders"}
        per_class: dict[str, dict[str, int]] = {name: {} for name in self.layout.subset_folders}
        for path, subset in self.given.items():
            if self.facts[path].usable:
                per_class[subset][self.labels[path]] = per_class[subset].get(self.labels[path], 0) + 1
        return {
            "kind": "pre-split", "description": self.describe_layout(),
            "subsets": {name: self.relative(folder) for name, folder in self.layout.subset_folders.items()},
            "images": self.images_per_subset(), "classes": per_class,
            "ignored": [self.relative(folder) for folder in self.layout.ignored_folders],
        }

    def split_groups(self) -> list[set[Path]]:
        """Exact and near-duplicate groups of one class merged where they share a file: the
        sets of images that a split must keep together."""
        return _merged(self.duplicates_within_class + self.near_duplicates)

    def summary(self) -> str:
        """One line, as `fit` prints it."""
        leaking = {path for group in self.leakage for path in group}
        groups = sum(not group & leaking for group in self.split_groups())
        parts = [f"{sum(self.class_counts.values())} images", f"{len(self.class_names)} classes"]
        if self.pre_split:
            parts.append(self.describe_layout())
        if self.unreadable:
            parts.append(f"{len(self.unreadable)} unreadable skipped")
        conflicting = sum(len(group) for group in self.duplicates_across_classes)
        if conflicting:
            parts.append(f"{conflicting} copies of images filed under two classes left out")
        parts.append(f"{groups} duplicate group{'s' if groups != 1 else ''} kept together")
        if self.leakage:
            plural = "s" if len(self.leakage) != 1 else ""
            parts.append(f"{len(self.leakage)} picture{plural} in two given subsets (leakage: see data_check.txt)")
        return ", ".join(parts)


def check_cache_file(root: Path, cache_dir: str | Path | None = None) -> Path:
    base = Path(cache_dir) if cache_dir is not None else default_cache_root()
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:20]
    return base / "check" / f"{key}.json"


def visible_files(folder: Path) -> list[Path]:
    """Files under `folder`, recursively, leaving out hidden files and folders, in path order.

    As `folder.rglob("*")` filtered by `is_file` lists them (symlinked folders are not entered,
    symlinked files are listed, unreadable folders are passed over), but from one directory
    listing each: no stat per file, which on 30,000 files was most of a repeated check's time.
    """
    found, pending = [], [str(folder)]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    if _is(entry.is_dir, follow_symlinks=False):
                        pending.append(entry.path)
                    elif _is(entry.is_file):
                        found.append(entry.path)
        except PermissionError:
            continue
    return [Path(path) for path in sorted(found, key=lambda path: path.split(os.sep))]  # as Paths sort


def _is(test, **options) -> bool:
    try:
        return test(**options)
    except OSError:  # as pathlib: a file that cannot be looked at is neither
        return False


def check_folder(
    data_dir: str | Path,
    *,
    image_size: int = CheckSettings.image_size,
    near_threshold: int = CheckSettings.near_threshold,
    max_aspect_ratio: float = CheckSettings.max_aspect_ratio,
    max_megapixels: float = CheckSettings.max_megapixels,
    min_classes: int = 2,
    cache_dir: str | Path | None = None,
    progress: bool = False,
) -> DataCheck:
    """Scan `data_dir` and report what needs attention.

    `data_dir` holds one sub-folder per class, or is pre-split: sub-folders named like subsets
    (train, val, test, ...; see layout.py), each with one sub-folder per class.
    `image_size` is the training size: images under half of it on a side are `tiny`.
    `near_threshold` is how many of 256 hash bits a near-duplicate may differ in (negative:
    no near-duplicate search). Images over `max_megapixels` are `very_large`. File facts are
    cached in `cache_dir` (default $TLEARN_CACHE_DIR or ~/.cache/tlearn); files not yet in it
    are read on all cores, with a progress bar on stderr (when a terminal) if `progress`.
    """
    settings = settings_from(CheckSettings, locals())
    root = Path(data_dir)
    layout = find_layout(root, min_classes)
    labels, given = {}, {}
    for folder in layout.class_folders:
        for path in visible_files(folder.path):
            labels[path] = folder.name
            if folder.subset:
                given[path] = folder.subset
    facts = inspect_files(list(labels), check_cache_file(root, cache_dir), progress=progress)
    found = _file_findings(facts, settings)

    usable = [path for path in facts if facts[path].usable]
    by_hash: dict[str, list[Path]] = defaultdict(list)
    for path in usable:
        by_hash[facts[path].sha256].append(path)
    exact = [paths for paths in by_hash.values() if len(paths) > 1]
    across = [paths for paths in exact if len({labels[p] for p in paths}) > 1]
    within = [paths for paths in exact if len({labels[p] for p in paths}) == 1]
    near = _near_duplicate_groups(usable, facts, settings.near_threshold) if settings.near_threshold >= 0 else []
    leakage = [sorted(group) for group in _merged(exact + near) if len({given.get(p) for p in group}) > 1]

    counts = {name: 0 for name in layout.class_names}
    for path in usable:
        counts[labels[path]] += 1
    return DataCheck(
        root, layout.class_names, counts, facts, labels, found["unreadable"], found["wrong_extension"],
        found["converted"], found["tiny"], found["extreme_aspect"], within, across, near, asdict(settings),
        layout, given, found["very_large"], _small_classes(layout, counts),
        _missing_from_subsets(layout, [p for p in usable if p in given], labels, given),
        sorted(leakage, key=lambda group: group[0]), _subset_like_classes(layout),
    )


def _subset_like_classes(layout: DataLayout) -> list[Finding]:
    others = ", ".join(f.name + "/" for f in layout.class_folders if f.path not in layout.subset_like_classes)
    detail = f"holds folders as a subset folder would, but not all beside it are subsets ({others}): taken as a class"
    return [Finding(path, detail) for path in layout.subset_like_classes]


def _file_findings(facts: dict[Path, FileFacts], settings: CheckSettings) -> dict[str, list[Finding]]:
    """What each file on its own needs attention for, by section of DataCheck."""
    found: dict[str, list[Finding]] = defaultdict(list)
    for path, fact in facts.items():
        if not fact.usable:
            found["unreadable"].append(Finding(path, fact.error))
            continue
        if path.suffix.lower() not in _EXTENSIONS.get(fact.format, set()):
            found["wrong_extension"].append(Finding(path, f"{fact.format} named {path.suffix or '(no extension)'}"))
        conversion = _conversion(fact)
        if conversion:
            found["converted"].append(Finding(path, conversion))
        if min(fact.width, fact.height) < settings.image_size / 2:
            found["tiny"].append(Finding(path, f"{fact.width}x{fact.height}, under half of {settings.image_size} px"))
        if max(fact.width, fact.height) > settings.max_aspect_ratio * min(fact.width, fact.height):
            found["extreme_aspect"].append(Finding(path, f"{fact.width}x{fact.height}"))
        if fact.width * fact.height > settings.max_megapixels * 1e6:
            found["very_large"].append(Finding(path, _very_large(fact)))
    return found


def _very_large(fact: FileFacts) -> str:
    detail = f"{fact.width}x{fact.height}, {fact.width * fact.height / 1e6:.0f} megapixels"
    if not fact.fingerprinted:
        detail += ": not decoded by check, so not searched for near-duplicates"
    return detail


def _small_classes(layout: DataLayout, counts: dict[str, int]) -> list[Finding]:
    """Classes too small to give training, validation and test an image each (fit refuses
    them), or to give a test score worth reading (fit warns)."""
    minimum = FitSettings.min_images_per_class
    found = []
    for name, count in counts.items():
        if count >= FEW_IMAGES_PER_CLASS:
            continue
        images = f"{count} image{'s' if count != 1 else ''}"
        if count < minimum:
            detail = (f"{images}: fewer than {minimum}, one each for training, validation and test; fit refuses "
                      "it (--min-images-per-class)")
        else:
            detail = f"{images}: fewer than {FEW_IMAGES_PER_CLASS}, so its test score rests on one or two pictures"
        found.append(Finding(layout.class_folder(name), detail))
    return found


def _missing_from_subsets(layout: DataLayout, given_paths: list[Path], labels: dict[Path, str],
                          given: dict[Path, str]) -> list[Finding]:
    """Pre-split: each class that a given subset has no usable image of, and a missing train folder."""
    if not layout.pre_split:
        return []
    if "train" not in layout.subset_folders:
        return [Finding(layout.root / "train", "no train folder: fit needs the training images in train/<class>/")]
    present = {(given[path], labels[path]) for path in given_paths}
    found = []
    for subset, folder in layout.subset_folders.items():
        for name in layout.class_names:
            if (subset, name) in present:
                continue
            if subset == "train":
                detail = f"no usable training images of {name}: fit cannot learn it and stops"
            else:
                detail = f"no usable {subset} images of {name}: its {subset} scores will be missing"
            found.append(Finding(folder / name, detail))
    return found


def _merged(groups: list[list[Path]]) -> list[set[Path]]:
    """`groups` joined wherever they share a file."""
    merged: list[set[Path]] = []
    for group in groups:
        joined = set(group)
        for other in [m for m in merged if m & joined]:
            joined |= other
            merged.remove(other)
        merged.append(joined)
    return merged


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
    paths = [path for path in paths if facts[path].fingerprinted]
    if len(paths) < 2:
        return []
    hashes = np.stack([np.frombuffer(bytes.fromhex(facts[p].dhash), np.uint8) for p in paths])
    colours = np.stack([np.frombuffer(bytes.fromhex(facts[p].colours), np.uint8) for p in paths]).astype(np.int16)
    pairs = hamming_pairs(hashes, threshold)  # exact, without comparing every pair (near_duplicates.py)
    shas = np.array([facts[p].sha256 for p in paths])
    pairs = pairs[shas[pairs[:, 0]] != shas[pairs[:, 1]]]  # exact copies are reported on their own
    parent = list(range(len(paths)))

    def find(index):
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    for i, j in pairs[_alike_in_colour(colours, pairs)].tolist():
        parent[find(i)] = find(j)
    groups: dict[int, list[Path]] = defaultdict(list)
    for index, path in enumerate(paths):
        groups[find(index)].append(path)
    return sorted(
        (sorted(group) for group in groups.values() if len({facts[p].sha256 for p in group}) > 1),
        key=lambda group: group[0],
    )


def _alike_in_colour(colours: np.ndarray, pairs: np.ndarray, batch: int = 1 << 18) -> np.ndarray:
    """Whether each pair's colour thumbnails differ by at most NEAR_COLOUR_DIFFERENCE on average;
    in batches, as a high threshold can give millions of pairs (384 bytes each to compare)."""
    return np.concatenate([
        np.abs(colours[pairs[start : start + batch, 0]] - colours[pairs[start : start + batch, 1]]).mean(axis=1)
        <= NEAR_COLOUR_DIFFERENCE
        for start in range(0, len(pairs), batch)
    ] or [np.zeros(0, bool)])


def format_check(check: DataCheck) -> str:
    """The report `tlearn check` prints: counts first, then each kind of finding."""
    counts = ", ".join(f"{name} {count}" for name, count in check.class_counts.items())
    lines = [
        f"{check.root}: {sum(check.class_counts.values())} images in {len(check.class_names)} classes ({counts})",
        f"Class imbalance (largest / smallest): {check.imbalance:.2f}",
    ]
    if check.pre_split:
        lines.insert(1, f"Layout: {check.describe_layout()}")

    def section(title: str, findings: list[Finding]) -> None:
        if findings:
            lines.append(f"\n{title} ({len(findings)}):")
            width = max(len(check.relative(f.path)) for f in findings)
            lines.extend(f"  {check.relative(f.path):<{width}}  {f.detail}" for f in findings)

    leaking = {path for group in check.leakage for path in group}

    def groups(title: str, found: list[list[Path]], leakage: bool = False) -> None:
        found = found if leakage else [group for group in found if not set(group) <= leaking]  # listed there
        if found:
            lines.append(f"\n{title} ({len(found)} group{'s' if len(found) != 1 else ''}):")
            lines.extend("  " + " = ".join(check.relative(p) for p in group) for group in found)

    section("Class folders named like subset folders", check.subset_like_classes)
    section("Classes missing from a given subset", check.missing_from_subsets)
    section("Classes with few images", check.small_classes)
    section("Cannot be used (skipped by fit)", check.unreadable)
    section("Content does not match the extension", check.wrong_extension)
    section("Converted to RGB when loaded", check.converted)
    section("Tiny images", check.tiny)
    section("Extreme aspect ratios", check.extreme_aspect)
    section(f"Very large images, over {check.settings['max_megapixels']:g} megapixels: a full decode takes "
            "about 3 bytes of memory a pixel", check.very_large)
    groups("Same image under two classes: a labelling error, left out by fit", check.duplicates_across_classes)
    groups("Exact duplicates within a class: kept in one subset by fit", check.duplicates_within_class)
    groups(f"Near-duplicates (threshold {check.settings['near_threshold']}): kept in one subset by fit",
           check.near_duplicates)
    # fit leaves these where they are: the folders are the user's split
    groups("Same picture in two given subsets, leakage: validation and test scores flatter the model",
           check.leakage, leakage=True)
    lines.append("\n" + ("Needs attention: see above." if check.needs_attention else "No problems found."))
    return "\n".join(lines) + "\n"

