"""Stratified, seeded train/validation/test splits that keep duplicates together."""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import TlearnError
from .dataset import ImageRecord, SkippedFile

SUBSETS = ("train", "validation", "test")


def split_records(
    records: list[ImageRecord], val_split: float, test_split: float, seed: int
) -> dict[str, list[ImageRecord]]:
    """Split each class by the given fractions; each record's `split_group` shares one subset.

    Without the grouping, a duplicated photo can sit in train and test at once and the test
    accuracy flatters the model. Records that a pre-split folder gave a subset (`given`) stay
    in it: only the subsets no folder gave are split, from the rest (the train folder), by
    the fractions of its images. A class with enough groups gets at least one image in each
    subset that is split. The fractions are checked by the settings (FitSettings).
    """
    rng = random.Random(seed)
    subsets: dict[str, list[ImageRecord]] = {name: [] for name in SUBSETS}
    given = {record.given for record in records} - {""}
    fractions = {name: value for name, value in (("test", test_split), ("validation", val_split)) if name not in given}
    by_label: dict[str, dict[str, list[ImageRecord]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        if record.given in ("validation", "test"):
            subsets[record.given].append(record)
        else:
            by_label[record.label][record.split_group].append(record)

    for label in sorted(by_label):
        groups = [by_label[label][key] for key in sorted(by_label[label])]
        rng.shuffle(groups)
        for name, group in zip(_subset_of_each(groups, fractions), groups):
            subsets[name].extend(group)

    for name in SUBSETS:
        if not subsets[name]:
            raise TlearnError(
                f"the {name} split is empty: {len(records)} images are too few for "
                f"--val-split {val_split} and --test-split {test_split}; add images or raise them"
            )
    return subsets


def _subset_of_each(groups: list[list[ImageRecord]], fractions: dict[str, float]) -> list[str]:
    """The subset of each of one class's (shuffled) groups: test and validation take groups
    until they hold their fraction of the class (at least one group each while a group is
    left for training); the rest, and always the last group, go to train."""
    total = sum(len(group) for group in groups)
    enough = len(groups) > len(fractions)
    targets = {name: max(round(total * fraction), 1 if enough else 0) for name, fraction in fractions.items()}
    counts = dict.fromkeys(fractions, 0)
    chosen = []
    for index, group in enumerate(groups):
        remaining_groups = len(groups) - index
        subset = "train"
        for name in fractions:
            # The last group always goes to train, so no class is left without training data.
            if counts[name] < targets[name] and remaining_groups > 1:
                subset = name
                counts[name] += len(group)
                break
        chosen.append(subset)
    return chosen


def representative_records(records: list[ImageRecord], seed: int, count: int) -> list[ImageRecord]:
    """Up to `count` records, stratified by class (round robin, the large classes longer), in
    an order seeded by `seed`: the calibration sample of int8 quantisation."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list] = {}
    for record in sorted(records, key=lambda r: str(r.path)):
        by_class.setdefault(record.label, []).append(record)
    queues = [list(rng.permutation(len(members))) for members in by_class.values()]
    chosen = []
    while len(chosen) < count and any(queues):
        for members, queue in zip(by_class.values(), queues):
            if queue and len(chosen) < count:
                chosen.append(members[queue.pop(0)])
    return chosen


def classes_missing_from_subsets(subsets: dict[str, list[ImageRecord]], class_names: list[str]) -> list[str]:
    """One warning line for each class that a subset holds no image of (too few images or
    duplicate groups to go round, or a pre-split folder without it)."""
    warnings = []
    for name in ("validation", "test"):
        present = {record.label for record in subsets[name]}
        missing = [label for label in class_names if label not in present]
        if not missing:
            continue
        classes, them = ", ".join(missing), "it" if len(missing) == 1 else "them"
        if name == "test":
            warnings.append(f"no test image of {classes}: the test scores leave {them} out")
        else:
            warnings.append(f"no validation image of {classes}: early stopping watches a loss without {them}")
    return warnings


def write_split_csv(
    path: Path, root: Path, subsets: dict[str, list[ImageRecord]], skipped: list[SkippedFile]
) -> None:
    """One row per file: where it went (with its duplicate group, if any), or why it was
    skipped. Paths are relative to `root`. Size and modification time are those the hash was
    taken at, so later commands can tell a file that changed since."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "subset", "sha256", "group", "reason", "size", "mtime_ns"])
        for name in SUBSETS:
            for record in subsets[name]:
                writer.writerow([_relative(record.path, root), record.label, name, record.sha256, record.group, "",
                                 _blank_if_none(record.size), _blank_if_none(record.mtime_ns)])
        for item in skipped:
            writer.writerow([_relative(item.path, root), item.path.parent.name, "skipped", "", "", item.reason, "", ""])


def read_split_csv(path: Path, root: Path) -> dict[str, list[ImageRecord]]:
    """The subsets that `write_split_csv` recorded, with paths resolved against `root`.

    Runs written before split.csv had size and mtime_ns give records without them."""
    subsets: dict[str, list[ImageRecord]] = {name: [] for name in SUBSETS}
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["subset"] in subsets:
                record = ImageRecord(root / row["path"], row["label"], row["sha256"], row.get("group", ""),
                                     size=_int_or_none(row.get("size")), mtime_ns=_int_or_none(row.get("mtime_ns")))
                subsets[row["subset"]].append(record)
    return subsets


def _blank_if_none(value: int | None) -> str | int:
    return "" if value is None else value


def _int_or_none(text: str | None) -> int | None:
    return int(text) if text else None


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
