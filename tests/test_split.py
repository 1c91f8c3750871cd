from collections import Counter
from pathlib import Path

import pytest

from tlearn.data.dataset import ImageRecord
from tlearn.errors import TlearnError
from tlearn.settings import FitSettings
from tlearn.data.split import read_split_csv, split_records, write_split_csv


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
