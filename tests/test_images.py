import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CLASS_COLOURS, add_odd_files, make_class_folders, solid_image
from tlearn.data.images import UnreadableImage, decode_rgb, load_rgb, probe, resize_for_model


@pytest.fixture
def odd(tmp_path):
    make_class_folders(tmp_path, per_class=1)
    return add_odd_files(tmp_path)


@pytest.mark.parametrize("kind", ["png_named_jpg", "grayscale", "rgba_png", "gif"])
def test_odd_but_valid_files_decode_to_rgb(odd, kind):
    decoded = decode_rgb(odd[kind])
    assert decoded.shape == (48, 48, 3) and decoded.dtype == np.uint8  # full resolution
    pixels = load_rgb(odd[kind], 40)
    assert pixels.shape == (40, 40, 3) and pixels.dtype == np.float32
    assert -1e-3 < pixels.min() and pixels.max() < 255 + 1e-3  # not rounded, so not clipped either


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
    assert (decode_rgb(path) == 255).all()


def test_cmyk_jpeg_keeps_its_colour(tmp_path):
    path = tmp_path / "cmyk.jpg"
    solid_image(CLASS_COLOURS["rain"], noise=0).convert("CMYK").save(path)
    red, green, blue = load_rgb(path, 16).reshape(-1, 3).mean(axis=0)
    assert blue > 150 and red < 80


def _half_white_tagged_rotate_90():
    """A 40x20 picture, left half black and right half white, and EXIF saying "rotate 90"."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, 20:] = 255
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6
    return image, exif


def test_exif_orientation_is_applied(tmp_path):
    # A 40x20 picture, left half black and right half white, tagged "rotate 90": upright it
    # is 20 wide and 40 tall, with the white half at the top or bottom.
    image, exif = _half_white_tagged_rotate_90()
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


def test_resizing_to_the_size_an_image_already_has_changes_nothing():
    # predict gives the SavedModel pixels already at the model's size: its resize layer must
    # then be the identity, or predict and the exported model would differ.
    pixels = np.random.default_rng(0).uniform(0, 255, (32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(resize_for_model(pixels, 32), pixels)


@pytest.mark.parametrize(
    "mode, suffix", [(mode, ".png") for mode in ("RGB", "RGBA", "P", "L", "I;16", "1")] + [("RGB", ".jpg"), ("L", ".jpg")]
)
def test_an_image_over_the_pixel_limit_is_reduced_in_every_mode(tmp_path, mode, suffix):
    gradient = np.linspace(0, 255, 120)[None, :, None] * np.ones((80, 1, 3))
    image = Image.fromarray(gradient.astype(np.uint8))
    image = image.convert("I;16") if mode == "I;16" else image.convert(mode)
    image.save(tmp_path / f"big{suffix}")
    full, reduced = decode_rgb(tmp_path / f"big{suffix}"), decode_rgb(tmp_path / f"big{suffix}", max_pixels=2500)
    assert full.shape == (80, 120, 3) and reduced.shape[0] * reduced.shape[1] <= 2500
    if mode != "1":  # the same picture, smaller: a left-to-right ramp in every mode
        assert np.abs(resize_for_model(full, 16) - resize_for_model(reduced, 16)).mean() < 4


def test_exif_orientation_survives_the_reduction(tmp_path):
    image, exif = _half_white_tagged_rotate_90()
    for suffix in (".png", ".jpg"):
        image.save(tmp_path / f"rotated{suffix}", exif=exif)
        upright = decode_rgb(tmp_path / f"rotated{suffix}", max_pixels=200).astype(int)
        assert upright.shape[0] > upright.shape[1]  # taller than wide, as the tag says
        assert abs(upright[:3].mean() - upright[-3:].mean()) > 200


DECODE_PEAK = """
import resource, sys, warnings
warnings.simplefilter("ignore")  # Pillow warns about images this large
from tlearn.data.images import decode_rgb
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
shapes = [decode_rgb(path).shape for path in sys.argv[1:]]
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024, shapes)
"""


def test_a_12000_pixel_square_photo_decodes_in_bounded_memory(tmp_path):
    ramp = np.linspace(0, 255, 12000).astype(np.uint8)
    row = np.stack([ramp, ramp[::-1], np.full_like(ramp, 128)], axis=-1)
    huge = Image.fromarray(np.broadcast_to(row[None], (12000, 12000, 3)).copy())
    paths = [tmp_path / "huge.jpg", tmp_path / "huge.png"]
    huge.save(paths[0], quality=80)
    huge.save(paths[1], compress_level=1)
    del huge
    root = Path(__file__).resolve().parents[1]
    child = subprocess.run([sys.executable, "-c", DECODE_PEAK, *map(str, paths)], capture_output=True, text=True,
                           cwd=root, env={"PYTHONPATH": str(root), "PATH": ""}, check=True)
    growth_mb, shapes = child.stdout.split(maxsplit=1)
    # At full resolution each is 432 MB of pixels and the decode peaks near 2 GB.
    assert int(growth_mb) < 1024, child.stdout
    assert shapes.strip() == "[(6000, 6000, 3), (6000, 6000, 3)]"
