from collections import Counter
from pathlib import Path

import pytest

from tlearn.data.dataset import ImageRecord
from tlearn.errors import TlearnError
from tlearn.settings import FitSettings
from tlearn.data.split import SUBSETS, classes_missing_from_subsets, read_split_csv, split_records, write_split_csv


def records_with_duplicates(per_class=40):
    records = []
    for label in ("a", "b", "c"):
        for number in range(per_class):
            # every fifth image has two byte-identical copies
            sha = f"{label}{number // 3 if number % 5 == 0 else number * 100}"
            records.append(ImageRecord(Path(f"/data/{label}/{number}.jpg"), label, sha))
    return records


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("val, test", [(0.15, 0.15), (0.3, 0.2), (0.1, 0.4)])
def test_duplicates_never_span_two_subsets(seed, val, test):
    subsets = split_records(records_with_duplicates(), val, test, seed)
    subset_of = {}
    for name, records in subsets.items():
        for record in records:
            assert subset_of.setdefault(record.sha256, name) == name
    assert sum(len(r) for r in subsets.values()) == 120


def test_split_is_stratified_and_seeded():
    records = [ImageRecord(Path(f"/d/{l}/{i}"), l, f"{l}{i}") for l, n in (("a", 100), ("b", 40)) for i in range(n)]
    subsets = split_records(records, 0.15, 0.15, seed=3)
    assert Counter(r.label for r in subsets["test"]) == {"a": 15, "b": 6}
    assert Counter(r.label for r in subsets["validation"]) == {"a": 15, "b": 6}
    assert split_records(records, 0.15, 0.15, seed=3) == subsets
    assert split_records(records, 0.15, 0.15, seed=4) != subsets


def test_split_csv_round_trips(tmp_path):
    root = Path("/data")
    subsets = split_records(records_with_duplicates(), 0.2, 0.2, 0)
    write_split_csv(tmp_path / "split.csv", root, subsets, [])
    assert read_split_csv(tmp_path / "split.csv", root) == subsets


@pytest.mark.parametrize(
    "val, test, message",
    [(0, 0.2, "--val-split"), (0.2, 1.0, "--test-split"), (0.5, 0.5, "leave images for training")],
)
def test_bad_fractions_are_clear_errors(val, test, message):
    with pytest.raises(TlearnError, match=message):
        FitSettings(weights="none", val_split=val, test_split=test)


def test_too_few_images_is_a_clear_error():
    records = [ImageRecord(Path(f"/d/{l}/0"), l, l) for l in "ab"]
    with pytest.raises(TlearnError, match="split is empty"):
        split_records(records, 0.15, 0.15, 0)


def given_records(per_class: dict[str, int]) -> list[ImageRecord]:
    """Records of classes a and b in pre-split folders: {"train": 20, "test": 4} per class."""
    return [
        ImageRecord(Path(f"/d/{subset}/{label}/{i}"), label, f"{subset}{label}{i}", given=subset)
        for subset, count in per_class.items() for label in "ab" for i in range(count)
    ]


def test_given_subsets_stay_and_only_the_missing_one_is_split_from_train():
    records = given_records({"train": 20, "test": 4})
    subsets = split_records(records, 0.15, 0.15, seed=0)
    assert all(record.given == "test" for record in subsets["test"]) and len(subsets["test"]) == 8
    assert all(record.given == "train" for record in subsets["validation"])
    assert Counter(record.label for record in subsets["validation"]) == {"a": 3, "b": 3}  # 15 % of train/, per class
    assert len(subsets["train"]) == 34


def test_only_a_train_folder_is_split_as_a_plain_folder_would_be():
    plain = [ImageRecord(Path(f"/d/{l}/{i}"), l, f"{l}{i}") for l in "ab" for i in range(20)]
    given = [ImageRecord(r.path, r.label, r.sha256, given="train") for r in plain]
    assert split_records(given, 0.15, 0.15, seed=5) == split_records(plain, 0.15, 0.15, seed=5)


def test_a_duplicate_group_in_the_train_folder_stays_in_one_subset_when_validation_is_carved():
    records = given_records({"train": 12, "validation": 3})
    records = [ImageRecord(r.path, r.label, r.sha256, "g" if r.given == "train" and int(r.path.name) < 4 else "",
                           r.given) for r in records]  # 4 copies per class share one group
    for seed in range(5):
        subsets = split_records(records, 0.3, 0.3, seed)
        holding = {name for name, rs in subsets.items() for r in rs if r.group == "g" and r.label == "a"}
        assert len(holding) == 1 and holding != {"validation"}  # validation was given: only test is carved


def test_a_class_of_three_gets_one_image_in_each_subset():
    records = [ImageRecord(Path(f"/d/{l}/{i}"), l, f"{l}{i}") for l, n in (("big", 40), ("small", 3)) for i in range(n)]
    subsets = split_records(records, 0.15, 0.15, seed=1)
    assert [sum(r.label == "small" for r in subsets[name]) for name in SUBSETS] == [1, 1, 1]


def test_classes_missing_from_a_subset_are_named():
    records = given_records({"train": 6, "test": 2})
    subsets = split_records([r for r in records if not (r.label == "b" and r.given == "test")], 0.2, 0.2, 0)
    assert classes_missing_from_subsets(subsets, ["a", "b"]) == ["no test image of b: the test scores leave it out"]
