"""Turning a checked folder of class sub-folders into labelled image records."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TlearnError
from ..settings import FEW_IMAGES_PER_CLASS, CheckSettings
from .check import DataCheck, check_folder


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    label: str
    sha256: str  # content hash: keys the activation cache
    group: str = ""  # images of one group (duplicates, near-duplicates) share a subset
    # The subset a pre-split folder gives it (train, validation, test; "" if none). Not part
    # of equality: split.csv records where each image went, not where it came from.
    given: str = field(default="", compare=False)
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
        ImageRecord(path, check.labels[path], fact.sha256, group_of.get(path, ""), check.given.get(path, ""),
                    size=fact.size, mtime_ns=fact.mtime_ns)
        for path, fact in check.facts.items()
        if path not in left_out
    ]
    for name in check.class_names:
        if not any(record.label == name for record in records):
            raise TlearnError(
                f"class folder {_class_folder(check, name)} has no usable images: add images or remove the folder"
            )
    return ScannedFolder(check.root, check.class_names, records, skipped, check)


def check_for_training(scanned: ScannedFolder, min_images_per_class: int) -> list[str]:
    """Refuse, with a TlearnError, classes fit cannot train and test; return one warning line
    for each class with under FEW_IMAGES_PER_CLASS images.

    A pre-split folder needs a train folder and training images of every class; any class
    needs at least `min_images_per_class` usable images (FitSettings says why).
    """
    counts = {name: 0 for name in scanned.class_names}
    for record in scanned.records:
        counts[record.label] += 1
    layout = scanned.check.layout
    if layout is not None and layout.pre_split:
        _check_training_folders(scanned)
    warnings = [layout.subset_like_note()] if layout is not None and layout.subset_like_classes else []
    for name, count in counts.items():
        if count < min_images_per_class:
            raise TlearnError(
                f"class folder {_class_folder(scanned.check, name)} has {_images(count)}, fewer than "
                f"--min-images-per-class {min_images_per_class} (one each for training, validation and test): "
                "add images, or lower --min-images-per-class to train anyway"
            )
    return warnings + [
        f"class {name} has only {_images(count)} (fewer than {FEW_IMAGES_PER_CLASS}): its test scores rest on "
        "one or two of them"
        for name, count in counts.items() if count < FEW_IMAGES_PER_CLASS
    ]


def _images(count: int) -> str:
    return f"{count} usable image{'s' if count != 1 else ''}"


def _check_training_folders(scanned: ScannedFolder) -> None:
    layout = scanned.check.layout
    if "train" not in layout.subset_folders:
        given = ", ".join(layout.folder_name(name) for name in layout.subset_folders)
        raise TlearnError(
            f"{layout.root} is pre-split ({given}) but has no train folder: put the training images in "
            f"{layout.root / 'train'}/<class>/"
        )
    for subset in layout.subset_folders:
        if not any(record.given == subset for record in scanned.records):
            raise TlearnError(
                f"{layout.subset_folders[subset]} has no usable images: add images to its class folders or remove it"
            )
    trained = {record.label for record in scanned.records if record.given == "train"}
    for name in scanned.class_names:
        if name not in trained:
            elsewhere = sorted({f"{layout.folder_name(r.given)}{name}" for r in scanned.records if r.label == name})
            raise TlearnError(
                f"class {name} has images in {', '.join(elsewhere)} but none usable in "
                f"{layout.subset_folders['train'] / name}: add training images there or remove {', '.join(elsewhere)}"
            )


def _class_folder(check: DataCheck, name: str) -> Path:
    return check.layout.class_folder(name) if check.layout is not None else check.root / name
