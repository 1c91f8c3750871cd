"""Turning a checked folder of class sub-folders into labelled image records."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TlearnError
from ..settings import CheckSettings
from .check import DataCheck, check_folder


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    label: str
    sha256: str  # content hash: keys the activation cache
    group: str = ""  # images of one group (duplicates, near-duplicates) share a subset
    # Bytes and modification time when hashed: a later command hashes the file again only if
    # they differ (None: unknown, always again). Facts about the file, not part of equality.
    size: int | None = field(default=None, compare=False)
    mtime_ns: int | None = field(default=None, compare=False)

    @property
    def split_group(self) -> str:
        return self.group or self.sha256


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
    check: DataCheck | None = None


def scan_folder(
    data_dir: str | Path,
    *,
    min_classes: int = 2,
    image_size: int = CheckSettings.image_size,
    near_threshold: int = CheckSettings.near_threshold,
    keep_cross_class_duplicates: bool = False,
    cache_dir: str | Path | None = None,
) -> ScannedFolder:
    """The usable images of `data_dir`, labelled by sub-folder, with their split groups.

    Unusable files are returned as `skipped` with their reason. A picture whose exact bytes
    appear under two classes is left out as well: it is a labelling error and would put the
    same picture in training and test under different labels (unless
    `keep_cross_class_duplicates`). Exact and near-duplicates of one class share a group, so
    the split keeps them in one subset.
    """
    check = check_folder(
        data_dir, image_size=image_size, near_threshold=near_threshold, min_classes=min_classes, cache_dir=cache_dir
    )
    skipped = [SkippedFile(finding.path, finding.detail) for finding in check.unreadable]
    for group in [] if keep_cross_class_duplicates else check.duplicates_across_classes:
        for path in group:
            others = sorted({check.labels[p] for p in group} - {check.labels[path]})
            skipped.append(SkippedFile(path, f"the same image is also in class {', '.join(others)}"))
    left_out = {item.path for item in skipped}

    group_of = {
        path: min(check.facts[p].sha256 for p in group) for group in check.split_groups() for path in group
    }
    records = [
        ImageRecord(path, check.labels[path], fact.sha256, group_of.get(path, ""), size=fact.size,
                    mtime_ns=fact.mtime_ns)
        for path, fact in check.facts.items()
        if path not in left_out
    ]
    for name in check.class_names:
        if not any(record.label == name for record in records):
            raise TlearnError(
                f"class folder {check.root / name} has no usable images: add images or remove the folder"
            )
    return ScannedFolder(check.root, check.class_names, records, skipped, check)
