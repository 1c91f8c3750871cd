"""A class with too few images: fit refuses it below --min-images-per-class and warns
below FEW_IMAGES_PER_CLASS, instead of reporting an F1 of 0 without a test image."""

import json

from conftest import FAST_FIT, make_class_folders, run_cli


def shrink(folder, keep: int) -> None:
    for path in sorted(folder.iterdir())[keep:]:
        path.unlink()


def test_fit_refuses_a_class_below_the_minimum(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=10)
    shrink(data / "rain", 1)
    result = run_cli("fit", data, "--out", tmp_path / "run", *FAST_FIT)
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (
        f"Error: class folder {data / 'rain'} has 1 usable image, fewer than --min-images-per-class 3 (one each "
        "for training, validation and test): add images, or lower --min-images-per-class to train anyway")
    assert not (tmp_path / "run").exists()


def test_fit_told_to_train_a_tiny_class_warns_about_it(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=10)
    shrink(data / "rain", 1)
    shrink(data / "sunrise", 3)
    run = tmp_path / "run"
    result = run_cli("fit", data, "--out", run, *FAST_FIT, "--epochs", "1", "--min-images-per-class", "1")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("Warning:")]
    assert warnings == [
        "Warning: class rain has only 1 usable image (fewer than 10): its test scores rest on one or two of them",
        "Warning: class sunrise has only 3 usable images (fewer than 10): its test scores rest on one or two of them",
        "Warning: no validation image of rain: early stopping watches a loss without it",
        "Warning: no test image of rain: the test scores leave it out",
        "Warning: label errors not searched: class rain has one picture (and its duplicates): cross-validation "
        "needs at least 2 distinct pictures per class to hold one out",
    ]
    split = json.loads((run / "tlearn.json").read_text())["split"]["sizes"]
    assert split == {"train": 6 + 1 + 1, "validation": 2 + 0 + 1, "test": 2 + 0 + 1}  # sunrise: one in each
