"""Pre-split folders (data/train/<class>/…, data/val/<class>/…, data/test/<class>/…): their
subsets are honoured, only the missing ones are split, and pictures shared between given
subsets are reported as leakage."""

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from conftest import CLASS_COLOURS, FAST_FIT, make_class_folders, run_cli, solid_image
from tlearn.data.dataset import check_for_training, scan_folder
from tlearn.data.split import split_records


def pre_split(root: Path, per_subset: dict[str, int]) -> Path:
    """`root/<subset folder>/<class>/…`: each subset folder gets its count of new pictures per class."""
    for offset, (folder, count) in enumerate(per_subset.items()):
        for index, (name, colour) in enumerate(CLASS_COLOURS.items()):
            (root / folder / name).mkdir(parents=True, exist_ok=True)
            for number in range(count):
                seed = 10_000 * (offset + 1) + 100 * index + number
                solid_image(colour, seed=seed).save(root / folder / name / f"{folder}-{number}.jpg", quality=95)
    return root


def split_rows(run_dir: Path) -> list[dict]:
    return list(csv.DictReader(open(run_dir / "split.csv", encoding="utf-8")))


def test_check_takes_subset_folders_as_subsets_not_classes(tmp_path):
    data = pre_split(tmp_path / "data", {"train": 8, "val": 3})
    result = run_cli("check", data, "--image-size", "64", "--cache-dir", tmp_path / "cache")
    lines = result.output.splitlines()
    assert lines[0] == f"{data}: 33 images in 3 classes (cloudy 11, rain 11, sunrise 11)"
    assert lines[1] == ("Layout: pre-split folders (train/ 24 for training, val/ 9 for validation; "
                        "test split from train/)")
    assert result.exit_code == 0 and lines[-1] == "No problems found."
    report = json.loads(run_cli("check", data, "--format", "json", "--cache-dir", tmp_path / "cache").output)
    assert report["classes"] == {"cloudy": 11, "rain": 11, "sunrise": 11}
    assert report["layout"]["subsets"] == {"train": "train", "validation": "val"}
    assert report["layout"]["classes"]["validation"] == {"cloudy": 3, "rain": 3, "sunrise": 3}


def test_fit_keeps_the_given_test_folder_and_carves_validation_from_train(tmp_path):
    data = pre_split(tmp_path / "data", {"Training": 10, "TEST": 3})  # names are matched case-insensitively
    shutil.copy(data / "Training" / "rain" / "Training-0.jpg", data / "TEST" / "rain" / "copy.jpg")
    run = tmp_path / "run"
    result = run_cli("fit", data, "--out", run, *FAST_FIT, "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert ("Data: 40 images, 3 classes, pre-split folders (Training/ 30 for training, TEST/ 10 for test; "
            "validation split from Training/), 0 duplicate groups kept together, 1 picture in two given subsets "
            "(leakage: see data_check.txt)") in result.output
    rows = split_rows(run)
    assert {row["subset"] for row in rows if row["path"].startswith("TEST/")} == {"test"}  # nothing moved
    assert {row["path"].split("/")[0] for row in rows if row["subset"] in ("train", "validation")} == {"Training"}
    assert Counter(row["label"] for row in rows if row["subset"] == "validation") == {
        "cloudy": 2, "rain": 2, "sunrise": 2}  # 15 % of each class's 10 training images
    assert {row["label"] for row in rows} == set(CLASS_COLOURS)  # classes, not subsets
    split = json.loads((run / "tlearn.json").read_text())["split"]
    assert split["given"] == {"train": "Training", "test": "TEST"}
    assert split["sizes"] == {"train": 24, "validation": 6, "test": 10}
    assert "Same picture in two given subsets" in (run / "data_check.txt").read_text()


def test_all_three_given_subsets_are_used_as_they_are(tmp_path):
    data = pre_split(tmp_path / "data", {"train": 4, "valid": 2, "testing": 2})
    scanned = scan_folder(data, cache_dir=tmp_path / "cache")
    assert scanned.class_names == sorted(CLASS_COLOURS)
    subsets = split_records(scanned.records, 0.15, 0.15, seed=0)
    folder_of = {"train": "train", "validation": "valid", "test": "testing"}
    for name, records in subsets.items():
        assert {record.path.relative_to(data).parts[0] for record in records} == {folder_of[name]}
    assert scanned.check.describe_layout() == (
        "pre-split folders (train/ 12 for training, valid/ 6 for validation, testing/ 6 for test; nothing split)")


def test_leakage_between_given_subsets_has_its_own_section(tmp_path):
    data = pre_split(tmp_path / "data", {"train": 10, "validation": 3, "test": 3})
    shutil.copy(data / "train" / "cloudy" / "train-1.jpg", data / "test" / "cloudy" / "same-bytes.jpg")
    original = data / "train" / "sunrise" / "train-2.jpg"
    Image.open(original).resize((96, 96)).save(data / "validation" / "sunrise" / "resized.jpg", quality=80)
    result = run_cli("check", data, "--image-size", "64", "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 1
    text = result.output
    assert ("Same picture in two given subsets, leakage: validation and test scores flatter the model (2 groups):\n"
            "  test/cloudy/same-bytes.jpg = train/cloudy/train-1.jpg\n"
            "  train/sunrise/train-2.jpg = validation/sunrise/resized.jpg\n") in text
    assert "Exact duplicates within a class" not in text  # the copy is not kept in one subset: it is leakage
    report = json.loads(run_cli("check", data, "--format", "json", "--cache-dir", tmp_path / "cache").output)
    assert report["leakage"] == [["test/cloudy/same-bytes.jpg", "train/cloudy/train-1.jpg"],
                                 ["train/sunrise/train-2.jpg", "validation/sunrise/resized.jpg"]]


def test_a_class_missing_from_a_given_subset(tmp_path):
    data = pre_split(tmp_path / "data", {"train": 10, "test": 3})
    shutil.rmtree(data / "test" / "rain")
    result = run_cli("check", data, "--image-size", "64", "--cache-dir", tmp_path / "cache")
    assert ("Classes missing from a given subset (1):\n"
            "  test/rain  no usable test images of rain: its test scores will be missing") in result.output
    fitted = run_cli("fit", data, "--out", tmp_path / "run", *FAST_FIT, "--epochs", "1")
    assert fitted.exit_code == 0, fitted.output
    assert "Warning: no test image of rain: the test scores leave it out" in fitted.output

    (data / "test" / "fog").mkdir()  # a class the training folder lacks
    for number in range(3):
        solid_image((200, 200, 200), seed=number).save(data / "test" / "fog" / f"fog{number}.jpg")
    refused = run_cli("fit", data, "--out", tmp_path / "run2", *FAST_FIT)
    assert refused.exit_code == 2
    assert refused.output.strip().splitlines()[-1] == (
        f"Error: class fog has images in test/fog but none usable in {data / 'train' / 'fog'}: "
        "add training images there or remove test/fog")


@pytest.mark.parametrize(
    "folders, message",
    [
        ({"val": 3, "test": 3}, "is pre-split (val/, test/) but has no train folder"),
        ({"train": 3, "val": 2, "validation": 2}, "has both val/ and validation/: both would be the validation subset"),
    ],
)
def test_pre_split_folders_fit_cannot_use_are_one_line_errors(tmp_path, folders, message):
    data = pre_split(tmp_path / "data", folders)
    result = run_cli("fit", data, "--out", tmp_path / "run", *FAST_FIT)
    last = result.output.strip().splitlines()[-1]
    assert result.exit_code == 2 and last.startswith("Error: ") and message in last
    assert "Traceback" not in result.output


def test_an_unlabelled_test_folder_is_ignored_and_said_so(tmp_path):
    data = pre_split(tmp_path / "data", {"train": 10})
    (data / "test").mkdir()
    solid_image((0, 0, 0)).save(data / "test" / "unlabelled.jpg")
    check = run_cli("check", data, "--image-size", "64", "--cache-dir", tmp_path / "cache")
    assert ("Layout: pre-split folders (train/ 30 for training; validation and test split from train/; "
            "test/ ignored (no class folders))") in check.output


def test_classes_named_like_subsets_holding_images_stay_classes(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=10)
    for name in CLASS_COLOURS:
        (data / name).rename(data / {"cloudy": "train", "rain": "test", "sunrise": "dev"}[name])
    result = run_cli("check", data, "--image-size", "64", "--cache-dir", tmp_path / "cache")
    assert result.output.splitlines()[0] == f"{data}: 30 images in 3 classes (dev 10, test 10, train 10)"
    assert "Layout:" not in result.output


def test_subset_folders_beside_another_folder_stay_classes_and_are_reported(tmp_path):
    data = pre_split(tmp_path / "data", {"train": 4, "test": 2, "extra": 2})
    result = run_cli("check", data, "--image-size", "64", "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 1
    assert ("Class folders named like subset folders (2):\n"
            "  test   holds folders as a subset folder would, but not all beside it are subsets (extra/): "
            "taken as a class\n") in result.output
    scanned = scan_folder(data, cache_dir=tmp_path / "cache")
    assert scanned.class_names == ["extra", "test", "train"]
    assert check_for_training(scanned, 3)[0] == (
        "test/, train/ are named like subset folders, but extra/ is not: all are taken as classes; "
        "to use the subsets, move the other folders out")


def test_evaluate_on_a_pre_split_folder_uses_its_test_folder(run_copy, tmp_path):
    data = pre_split(tmp_path / "data", {"train": 3, "test": 2})
    result = run_cli("evaluate", run_copy, "--data", data, "--no-progress")
    assert result.exit_code == 0, result.output
    assert json.loads((run_copy / "report" / "evaluate-data" / "metrics.json").read_text())["images"] == 6
