"""Scanning a folder of class sub-folders into labelled image records."""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .errors import TlearnError
from .images import UnreadableImage, file_sha256, probe


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    label: str
    sha256: str  # content hash: groups duplicates and keys the activation cache


@dataclass(frozen=True)
class SkippedFile:
    path: Path
    reason: str


@dataclass
class ScannedFolder:
    root: Path
    class_names: list[str]
    records: list[ImageRecord]
    skipped: list[SkippedFile] = field(default_factory=list)

    def duplicate_groups(self) -> int:
        """How many sets of byte-identical files the folder holds."""
        counts: dict[str, int] = defaultdict(int)
        for record in self.records:
            counts[record.sha256] += 1
        return sum(1 for count in counts.values() if count > 1)


def _visible_files(folder: Path) -> list[Path]:
    """Files under `folder`, recursively, leaving out hidden files and folders."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def _inspect(path: Path) -> tuple[str | None, str | None]:
    """(sha256, None) for a usable image, (None, reason) otherwise."""
    try:
        probe(path)
        return file_sha256(path), None
    except UnreadableImage as error:
        return None, str(error)
    except OSError as error:
        return None, error.strerror or str(error)


def scan_folder(data_dir: str | Path, workers: int = 8, min_classes: int = 2) -> ScannedFolder:
    """Find the classes (sub-folders, sorted) and the images in each, by content.

    Non-images and undecodable headers are returned as `skipped` with their reason. A file
    whose exact bytes appear under two classes is left out as well: it is a labelling error
    and would put the same picture in training and test under different labels.
    """
    root = Path(data_dir)
    if not root.exists():
        raise TlearnError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise TlearnError(f"{root} is not a folder: give a folder with one sub-folder per class")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(class_dirs) < min_classes:
        found = ", ".join(p.name for p in class_dirs) or "none"
        raise TlearnError(
            f"{root} needs at least {min_classes} class sub-folder{'s' if min_classes > 1 else ''} (found {found}): "
            "put each class's images in a folder named after the class"
        )

    candidates = [(path, class_dir.name) for class_dir in class_dirs for path in _visible_files(class_dir)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda item: _inspect(item[0]), candidates))

    records, skipped = [], []
    for (path, label), (sha, reason) in zip(candidates, results):
        if sha is None:
            skipped.append(SkippedFile(path, reason))
        else:
            records.append(ImageRecord(path, label, sha))

    labels_by_hash: dict[str, set[str]] = defaultdict(set)
    for record in records:
        labels_by_hash[record.sha256].add(record.label)
    conflicting = {sha for sha, labels in labels_by_hash.items() if len(labels) > 1}
    for record in records:
        if record.sha256 in conflicting:
            others = ", ".join(sorted(labels_by_hash[record.sha256] - {record.label}))
            skipped.append(SkippedFile(record.path, f"the same image is also in class {others}"))
    records = [record for record in records if record.sha256 not in conflicting]

    for class_dir in class_dirs:
        if not any(record.label == class_dir.name for record in records):
            raise TlearnError(
                f"class folder {class_dir} has no usable images: add images or remove the folder"
            )
    return ScannedFolder(root, [p.name for p in class_dirs], records, skipped)
