import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_class_folders, run_cli
from tlearn.data.check import check_folder
from tlearn.data.dataset import scan_folder
from tlearn.data.split import split_records


def textured(seed, size=(160, 120)):
    """A photo-like picture with structure, so perceptual hashes tell pictures apart."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A folder with one of each problem `check` must find."""
    root = tmp_path_factory.mktemp("planted") / "data"
    for index, name in enumerate(("cats", "dogs", "owls")):
        (root / name).mkdir(parents=True)
        for number in range(6):
            textured(index * 100 + number).save(root / name / f"{name}{number}.jpg", quality=92)
    cats, dogs, owls = root / "cats", root / "dogs", root / "owls"
    shutil.copy(cats / "cats0.jpg", cats / "cats0_copy.jpg")  # exact, within class
    shutil.copy(dogs / "dogs1.jpg", owls / "looks_like_an_owl.jpg")  # exact, across classes
    textured(3).resize((320, 240)).save(cats / "cats3_large.jpg", quality=70)  # near: resized, re-encoded
    truncated = (dogs / "dogs2.jpg").read_bytes()
    (dogs / "truncated.jpg").write_bytes(truncated[: len(truncated) // 2])
    (dogs / "zero.jpg").write_bytes(b"")
    (dogs / "notes.jpg").write_text("shopping list")
    textured(7).save(owls / "png_inside.jpg", format="PNG")
    frames = [textured(s).convert("P") for s in (8, 9, 10)]
    frames[0].save(owls / "animated.gif", save_all=True, append_images=frames[1:])
    textured(11).convert("CMYK").save(owls / "cmyk.jpg")
    textured(12, (40, 30)).save(cats / "tiny.jpg")
    textured(13, (600, 100)).save(cats / "panorama.jpg")
    # a header that claims 40000 x 40000 pixels: a decompression bomb
    Image.new("1", (40000, 40000)).save(owls / "bomb.png")
    return root


def by_name(findings):
    return {finding.path.name: finding.detail for finding in findings}


def test_unreadable_files_are_classified(planted):
    unreadable = by_name(check_folder(planted, cache_dir=planted.parent / "cache").unreadable)
    assert unreadable["truncated.jpg"] == "truncated image"
    assert unreadable["zero.jpg"] == "empty file (0 bytes)"
    assert unreadable["notes.jpg"] == "not an image"
    assert unreadable["bomb.png"].startswith("too large to decode safely")
    assert len(unreadable) == 4


def test_conversions_and_mismatches(planted):
    check = check_folder(planted, image_size=64, cache_dir=planted.parent / "cache")
    assert by_name(check.wrong_extension) == {"png_inside.jpg": "PNG named .jpg"}
    converted = by_name(check.converted)
    assert converted["animated.gif"].startswith("animated, 3 frames: first used")
    assert converted["cmyk.jpg"] == "CMYK"
    assert "png_inside.jpg" not in converted
    assert set(by_name(check.tiny)) == {"tiny.jpg"}
    assert set(by_name(check.extreme_aspect)) == {"panorama.jpg"}


def test_duplicates_exact_across_and_near(planted):
    check = check_folder(planted, cache_dir=planted.parent / "cache")
    names = lambda groups: [sorted(p.name for p in group) for group in groups]  # noqa: E731
    assert names(check.duplicates_within_class) == [["cats0.jpg", "cats0_copy.jpg"]]
    assert names(check.duplicates_across_classes) == [["dogs1.jpg", "looks_like_an_owl.jpg"]]
    assert names(check.near_duplicates) == [["cats3.jpg", "cats3_large.jpg"]]
    assert check.class_counts == {"cats": 10, "dogs": 6, "owls": 10}
    assert check.imbalance == pytest.approx(10 / 6)


def test_cli_exit_codes_and_json(planted, tmp_path):
    result = run_cli("check", planted, "--format", "json", "--cache-dir", tmp_path)
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["needs_attention"] and report["images"] == 26
    assert {"path": "owls/png_inside.jpg", "detail": "PNG named .jpg"} in report["wrong_extension"]
    clean = make_class_folders(tmp_path / "clean", per_class=10, size=160)  # fewer per class is a finding
    result = run_cli("check", clean, "--cache-dir", tmp_path)
    assert result.exit_code == 0 and result.output.rstrip().endswith("No problems found.")
    assert run_cli("check", tmp_path / "missing").exit_code == 2


def test_second_check_reuses_the_cache_and_sees_changes(planted, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(planted, data)
    cache = tmp_path / "cache"
    first = check_folder(data, cache_dir=cache)
    # Same size and mtime: the cached facts are used without reading the file (so the
    # rewritten bytes go unseen, which is exactly how the cache is keyed).
    path = data / "cats" / "cats1.jpg"
    stat = path.stat()
    path.write_bytes(bytes(255 - b for b in path.read_bytes()))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = check_folder(data, cache_dir=cache)
    assert again.facts[path].sha256 == first.facts[path].sha256
    (data / "dogs" / "notes.jpg").unlink()
    textured(99).save(data / "dogs" / "notes.jpg")  # the text file becomes a real picture
    changed = check_folder(data, cache_dir=cache)
    assert "notes.jpg" in by_name(again.unreadable) and "notes.jpg" not in by_name(changed.unreadable)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("val, test", [(0.15, 0.15), (0.25, 0.25)])
def test_no_duplicate_group_spans_two_subsets(planted, seed, val, test):
    scanned = scan_folder(planted, cache_dir=planted.parent / "cache")
    skipped = {item.path.name for item in scanned.skipped}
    assert {"dogs1.jpg", "looks_like_an_owl.jpg", "truncated.jpg"} <= skipped
    subsets = split_records(scanned.records, val, test, seed)
    subset_of = {}
    for name, records in subsets.items():
        for record in records:
            assert subset_of.setdefault(record.split_group, name) == name
    cats = {r.path.name: r.split_group for r in scanned.records if r.label == "cats"}
    assert cats["cats0.jpg"] == cats["cats0_copy.jpg"] and cats["cats3.jpg"] == cats["cats3_large.jpg"]


def test_fit_on_planted_problems_reports_them(planted, tmp_path):
    run = tmp_path / "run"
    result = run_cli("fit", planted, "--out", run, "--weights", "none", "--image-size", "32", "--epochs", "2",
                     "--val-split", "0.25", "--test-split", "0.25", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "Data: 26 images, 3 classes, 4 unreadable skipped, 2 copies of images filed under two classes " \
           "left out, 2 duplicate groups kept together" in result.output
    assert json.loads((run / "data_check.json").read_text())["near_duplicates"] == [["cats/cats3.jpg", "cats/cats3_large.jpg"]]
    assert "Near-duplicates" in (run / "data_check.txt").read_text()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak memory from /proc")
def test_a_huge_picture_is_reported_without_decoding_it(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=10, size=160)
    Image.new("1", (12_000, 12_000), 1).save(data / "cloudy" / "canvas.png")  # 144 megapixels, 41 KB on disk
    result = run_cli("check", data, "--cache-dir", tmp_path / "cache")
    assert ("Very large images, over 50 megapixels: a full decode takes about 3 bytes of memory a pixel (1):\n"
            "  cloudy/canvas.png  12000x12000, 144 megapixels: not decoded by check, so not searched for "
            "near-duplicates\n") in result.output
    assert result.exit_code == 1
    # In a process of its own: its peak memory (a full decode took check to 0.9 GB) and its
    # stderr (Pillow's DecompressionBombWarning would add two lines of source code).
    measure = ("import sys; from tlearn.data.check import check_folder; "
               "check_folder(sys.argv[1], cache_dir=sys.argv[2]); "
               "print(next(line for line in open('/proc/self/status') if line.startswith('VmHWM')).split()[1])")
    process = subprocess.run([sys.executable, "-c", measure, str(data), str(tmp_path / "fresh-cache")],
                             capture_output=True, text=True, check=True)
    assert int(process.stdout) < 300_000  # kB
    assert process.stderr == ""


def test_a_truncated_huge_png_is_still_found(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=1)
    canvas = tmp_path / "canvas.png"
    Image.new("1", (12_000, 12_000), 1).save(canvas)
    (data / "rain" / "cut.png").write_bytes(canvas.read_bytes()[:20_000])
    unreadable = by_name(check_folder(data, cache_dir=tmp_path / "cache").unreadable)
    assert unreadable == {"cut.png": "truncated image"}


def test_decompression_bomb_reason_is_whole(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=10, size=160)
    Image.new("1", (40_000, 40_000)).save(data / "rain" / "bomb.png")  # 1.6 billion pixels, 190 KB on disk
    result = run_cli("check", data, "--cache-dir", tmp_path / "cache")
    limit = 2 * Image.MAX_IMAGE_PIXELS  # Pillow refuses pictures over twice its warning limit
    assert ("Cannot be used (skipped by fit) (1):\n"
            f"  rain/bomb.png  too large to decode safely (1,600,000,000 pixels, over the limit of {limit:,})\n"
            ) in result.output


def test_small_classes_are_listed(tmp_path):
    data = make_class_folders(tmp_path / "data", per_class=10, size=160)
    for path in sorted((data / "rain").iterdir())[1:]:
        path.unlink()
    for path in sorted((data / "sunrise").iterdir())[5:]:
        path.unlink()
    result = run_cli("check", data, "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 1
    assert ("Classes with few images (2):\n"
            "  rain     1 image: fewer than 3, one each for training, validation and test; fit refuses it "
            "(--min-images-per-class)\n"
            "  sunrise  5 images: fewer than 10, so its test score rests on one or two pictures\n") in result.output
    report = json.loads(run_cli("check", data, "--format", "json", "--cache-dir", tmp_path / "cache").output)
    assert [finding["path"] for finding in report["small_classes"]] == ["rain", "sunrise"]
