"""How an image folder is laid out: one sub-folder per class, or pre-split into subsets.

Many public datasets ship as `data/train/<class>/…` and `data/val/<class>/…`. Read as one
folder per class, that trains a train-vs-val classifier; so a folder whose visible
sub-folders are all named like subsets, and of which at least one holds sub-folders, is
taken as pre-split: its subsets are honoured and only the missing ones are split.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TlearnError

# Folder names (compared case-insensitively) and the subset each one gives. "dev" is the
# validation set's name in many research datasets.
SUBSET_FOLDER_NAMES = {
    "train": "train", "training": "train",
    "val": "validation", "valid": "validation", "validation": "validation", "dev": "validation",
    "test": "test", "testing": "test",
}
SUBSET_ROLES = {"train": "training", "validation": "validation", "test": "test"}


@dataclass(frozen=True)
class ClassFolder:
    path: Path
    name: str  # the class
    subset: str = ""  # the subset its folder gives ("train", "validation", "test"); "" if not pre-split


@dataclass(frozen=True)
class DataLayout:
    """The class folders of a data folder and, when it is pre-split, the folder of each subset."""

    root: Path
    class_folders: list[ClassFolder]
    subset_folders: dict[str, Path] = field(default_factory=dict)  # given subset -> its folder
    ignored_folders: list[Path] = field(default_factory=list)  # subset-named folders without classes

    @property
    def subset_like_classes(self) -> list[Path]:
        """Class folders named like subsets and holding folders themselves: a pre-split folder
        with something else beside its subsets, most likely (or classes that happen to be so named)."""
        if self.pre_split:
            return []
        return [folder.path for folder in self.class_folders
                if folder.name.lower() in SUBSET_FOLDER_NAMES and _visible_folders(folder.path)]

    def subset_like_note(self) -> str:
        """One line on `subset_like_classes`, or ""."""
        named = self.subset_like_classes
        if not named:
            return ""
        others = [folder.name + "/" for folder in self.class_folders if folder.path not in named]
        verb = lambda names: "is" if len(names) == 1 else "are"  # noqa: E731
        return (f"{', '.join(f.name + '/' for f in named)} {verb(named)} named like subset folders, but "
                f"{', '.join(others)} {verb(others)} not: all are taken as classes; to use the subsets, move the "
                "other folders out")

    @property
    def pre_split(self) -> bool:
        return bool(self.subset_folders)

    @property
    def class_names(self) -> list[str]:
        return sorted({folder.name for folder in self.class_folders})

    def class_folder(self, name: str) -> Path:
        """Where class `name`'s images are: its folder, in a pre-split folder its training folder."""
        folders = [folder.path for folder in self.class_folders if folder.name == name]
        training = [folder for folder in folders if folder.parent == self.subset_folders.get("train")]
        return (training or folders or [self.root / name])[0]

    def folder_name(self, subset: str) -> str:
        """The given folder of `subset` as a user wrote it, e.g. `val/`."""
        return f"{self.subset_folders[subset].name}/"

    def describe(self, images_per_subset: dict[str, int]) -> str:
        """One line on what was detected, e.g. `pre-split folders (train/ 48 for training,
        val/ 18 for validation; test split from train/)`; "" for one folder per class."""
        if not self.pre_split:
            return ""
        given = [f"{self.folder_name(name)} {images_per_subset.get(name, 0)} for {SUBSET_ROLES[name]}"
                 for name in SUBSET_ROLES if name in self.subset_folders]
        missing = [name for name in ("validation", "test") if name not in self.subset_folders]
        if "train" not in self.subset_folders:
            tail = "no train folder"
        elif missing:
            tail = f"{' and '.join(missing)} split from {self.folder_name('train')}"
        else:
            tail = "nothing split"
        ignored = "".join(f"; {folder.name}/ ignored (no class folders)" for folder in self.ignored_folders)
        return f"pre-split folders ({', '.join(given)}; {tail}{ignored})"


def find_layout(root: Path, min_classes: int = 2) -> DataLayout:
    """The layout of `root`: one sub-folder per class, or subset folders of class folders.

    Raises TlearnError when `root` is missing or not a folder, when two folders give the same
    subset (`val/` and `validation/`), or when there are fewer than `min_classes` classes.
    """
    if not root.exists():
        raise TlearnError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise TlearnError(f"{root} is not a folder: give a folder with one sub-folder per class")
    folders = _visible_folders(root)
    holding_classes = [folder for folder in folders if _visible_folders(folder)]
    if folders and holding_classes and all(folder.name.lower() in SUBSET_FOLDER_NAMES for folder in folders):
        layout = _pre_split(root, holding_classes, [folder for folder in folders if folder not in holding_classes])
    else:
        layout = DataLayout(root, [ClassFolder(folder, folder.name) for folder in folders])
    if len(layout.class_names) < min_classes:
        found = ", ".join(layout.class_names) or "none"
        plural = "s" if min_classes > 1 else ""
        raise TlearnError(
            f"{root} needs at least {min_classes} class sub-folder{plural} (found {found}): "
            "put each class's images in a folder named after the class"
        )
    return layout


def _pre_split(root: Path, subset_folders: list[Path], ignored: list[Path]) -> DataLayout:
    given: dict[str, Path] = {}
    for folder in subset_folders:
        subset = SUBSET_FOLDER_NAMES[folder.name.lower()]
        if subset in given:
            raise TlearnError(
                f"{root} has both {given[subset].name}/ and {folder.name}/: both would be the {subset} "
                "subset; merge them or move one out"
            )
        given[subset] = folder
    given = {subset: given[subset] for subset in SUBSET_ROLES if subset in given}  # train, validation, test
    classes = [
        ClassFolder(folder, folder.name, subset) for subset in given for folder in _visible_folders(given[subset])
    ]
    return DataLayout(root, classes, given, ignored)


def _visible_folders(folder: Path) -> list[Path]:
    # scandir knows each entry's type from the listing: no stat for each of a class's images
    with os.scandir(folder) as entries:
        names = [entry.name for entry in entries if not entry.name.startswith(".") and _is_folder(entry)]
    return [folder / name for name in sorted(names)]


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # as Path.is_dir
        return False
