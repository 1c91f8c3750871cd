import numpy as np
import pytest
from PIL import Image

from conftest import CLASS_COLOURS, add_odd_files, make_class_folders, solid_image
from tlearn.data.images import UnreadableImage, load_rgb, probe


@pytest.fixture
def odd(tmp_path):
    make_class_folders(tmp_path, per_class=1)
    return add_odd_files(tmp_path)


@pytest.mark.parametrize("kind", ["png_named_jpg", "grayscale", "rgba_png", "gif"])
def test_odd_but_valid_files_decode_to_rgb(odd, kind):
    pixels = load_rgb(odd[kind], 40)
    assert pixels.shape == (40, 40, 3) and pixels.dtype == np.uint8


@pytest.mark.parametrize(
    "kind, reason",
    [("truncated", "truncated"), ("zero_bytes", "empty file"), ("text", "not an image")],
)
def test_broken_files_raise_with_reason(odd, kind, reason):
    with pytest.raises(UnreadableImage, match=reason):
        if kind == "truncated":
            load_rgb(odd[kind], 32)
        else:
            probe(odd[kind])
            load_rgb(odd[kind], 32)


def test_png_named_jpg_is_found_by_content(odd):
    assert probe(odd["png_named_jpg"]) == "PNG"


def test_transparency_is_composited_on_white(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (20, 20), (255, 0, 0, 0)).save(path)
    assert (load_rgb(path, 8) == 255).all()


def test_cmyk_jpeg_keeps_its_colour(tmp_path):
    path = tmp_path / "cmyk.jpg"
    solid_image(CLASS_COLOURS["rain"], noise=0).convert("CMYK").save(path)
    red, green, blue = load_rgb(path, 16).reshape(-1, 3).mean(axis=0)
    assert blue > 150 and red < 80


def test_exif_orientation_is_applied(tmp_path):
    # A 40x20 picture, left half black and right half white, tagged "rotate 90": upright it
    # is 20 wide and 40 tall, with the white half at the top or bottom.
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, 20:] = 255
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=100)
    upright = load_rgb(path, 40).astype(int)
    top, bottom = upright[:10].mean(), upright[30:].mean()
    left, right = upright[:, :10].mean(), upright[:, 30:].mean()
    assert abs(top - bottom) > 200 and abs(left - right) < 50


BROKEN = {"zero_bytes": "sunrise/empty.jpg", "truncated": "rain/truncated.jpg", "text": "cloudy/notes.jpg"}


@pytest.mark.parametrize("kind, reason", [("zero_bytes", "empty file (0 bytes)"), ("truncated", "truncated image"),
                                          ("text", "not an image")])
def test_a_broken_file_has_one_reason_in_check_fit_and_predict(fitted_run, dataset_dir, kind, reason):
    import csv
    import json

    from conftest import run_cli

    relative = BROKEN[kind]
    check = json.loads(run_cli("check", dataset_dir, "--format", "json").stdout)
    from_check = {item["path"]: item["detail"] for item in check["unreadable"]}[relative]
    from_fit = {row["path"]: row["reason"] for row in csv.DictReader(open(fitted_run / "split.csv"))}[relative]
    predicted = run_cli("predict", dataset_dir / relative, "--model", fitted_run, "--format", "json")
    from_predict = json.loads(predicted.stdout)[0]["error"]
    with pytest.raises(UnreadableImage) as decoding:  # what fit says when a file breaks after its check
        load_rgb(dataset_dir / relative, 32)
    assert from_check == from_fit == from_predict == str(decoding.value) == reason
