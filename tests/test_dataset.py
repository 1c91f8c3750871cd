import shutil

import pytest

from conftest import make_class_folders
from tlearn.data.dataset import scan_folder
from tlearn.errors import TlearnError


def test_classes_are_sorted_subfolders_and_odd_files_are_reported(dataset_dir):
    scanned = scan_folder(dataset_dir)
    assert scanned.class_names == ["cloudy", "rain", "sunrise"]
    skipped = {item.path.name: item.reason for item in scanned.skipped}
    assert skipped == {"empty.jpg": "empty file (0 bytes)", "notes.jpg": "not an image", "truncated.jpg": "truncated image"}
    names = {record.path.name for record in scanned.records}
    assert {"png_inside.jpg", "gray.jpg", "alpha.png", "animated.gif"} <= names
    assert ".DS_Store" not in names


def test_same_image_under_two_classes_is_left_out(tmp_path):
    root = make_class_folders(tmp_path / "data", per_class=3)
    shutil.copy(root / "rain" / "rain0.jpg", root / "cloudy" / "copy_of_rain0.jpg")
    shutil.copy(root / "rain" / "rain1.jpg", root / "rain" / "rain1_again.jpg")
    scanned = scan_folder(root)
    reasons = {item.path.name: item.reason for item in scanned.skipped}
    assert reasons == {
        "copy_of_rain0.jpg": "the same image is also in class rain",
        "rain0.jpg": "the same image is also in class cloudy",
    }
    copies = [r for r in scanned.records if r.path.name.startswith("rain1")]
    assert len(copies) == 2 and copies[0].group == copies[1].group != ""  # same class: kept, together


@pytest.mark.parametrize(
    "layout, message",
    [
        ("missing", "does not exist"),
        ("file", "is not a folder"),
        ("one_class", "at least 2 class sub-folders"),
        ("empty_class", "has no usable images"),
    ],
)
def test_unusable_folders_are_clear_errors(tmp_path, layout, message):
    root = tmp_path / "data"
    if layout == "file":
        root.write_text("x")
    elif layout == "one_class":
        make_class_folders(root, per_class=2)
        shutil.rmtree(root / "rain")
        shutil.rmtree(root / "sunrise")
    elif layout == "empty_class":
        make_class_folders(root, per_class=2)
        (root / "fog").mkdir()
        (root / "fog" / "readme.txt").write_text("todo")
    with pytest.raises(TlearnError, match=message):
        scan_folder(root)
