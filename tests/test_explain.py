"""Grad-CAM: heatmaps that find the evidence, the `explain` command and the error gallery."""

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tlearn
from conftest import CLASS_COLOURS, SHARED, make_class_folders, run_cli
from tlearn.data.images import load_rgb
from tlearn.explanation import gradcam, overlay, write_error_gallery
from tlearn.model import set_temperature, temperature_of

WEIGHTS = SHARED / "weights" / "vgg16_imagenet_torchvision_notop.weights.h5"
SQUARE_COLOURS = {"blue": (30, 30, 220), "green": (30, 200, 30), "red": (220, 30, 30)}


def square_images(root, per_class: int, size: int, seed: int = 0) -> dict[str, int]:
    """Dark noisy pictures whose class is the colour of one square, in a random quadrant.

    Returns path -> quadrant (0 top left, 1 top right, 2 bottom left, 3 bottom right)."""
    rng, side, half = np.random.default_rng(seed), size // 3, size // 2
    quadrants = {}
    for name, colour in SQUARE_COLOURS.items():
        (root / name).mkdir(parents=True)
        for number in range(per_class):
            pixels = rng.normal(40, 10, (size, size, 3))
            quadrant = int(rng.integers(4))
            top = quadrant // 2 * half + int(rng.integers(0, half - side + 1))
            left = quadrant % 2 * half + int(rng.integers(0, half - side + 1))
            pixels[top : top + side, left : left + side] = colour
            path = root / name / f"{name}{number}.png"
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
            quadrants[str(path)] = quadrant
    return quadrants


def quadrant_masses(heatmap: np.ndarray) -> np.ndarray:
    """Share of the heatmap's mass in each quadrant, in the order of `square_images`."""
    half = heatmap.shape[0] // 2
    masses = np.array([heatmap[r * half : (r + 1) * half, c * half : (c + 1) * half].sum() for r in (0, 1) for c in (0, 1)])
    return masses / max(masses.sum(), 1e-12)


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="../shared weights absent")
def test_heatmap_mass_lies_in_the_quadrant_of_the_square(tmp_path):
    # Real ImageNet weights: random ones learn the colours but do not localise them. At 96 px
    # block5_conv3 is a 6 x 6 grid, so a quadrant is 3 x 3 cells.
    size = 96
    square_images(tmp_path / "squares", per_class=15, size=size)
    result = tlearn.fit(tmp_path / "squares", out=tmp_path / "run", weights=str(WEIGHTS), preprocess="torch",
                        image_size=size, epochs=30, patience=30, lr=0.003, batch_size=8, seed=1,
                        finetune_cache=False, progress=False)
    run = tlearn.Run.open(result.run_dir)
    fresh = square_images(tmp_path / "fresh", per_class=8, size=size, seed=1)  # more than the test split's 6
    paths = list(fresh)
    probabilities, heatmaps = gradcam(run.load_model(), np.stack([load_rgb(path, size) for path in paths]))
    assert heatmaps.shape == (len(paths), 6, 6) and heatmaps.min() >= 0 and heatmaps.max() <= 1
    true = [run.class_names.index(Path(path).parent.name) for path in paths]
    assert np.mean(probabilities.argmax(axis=1) == true) >= 0.9
    masses = np.array([quadrant_masses(heatmap) for heatmap in heatmaps])
    shares = np.array([mass[fresh[path]] for mass, path in zip(masses, paths)])
    largest = masses.argmax(axis=1) == [fresh[path] for path in paths]
    assert shares.mean() > 0.5, shares.round(2)  # a quadrant holds 0.25 of an even map
    assert np.mean(largest) >= 0.8, shares.round(2)


def test_heatmaps_are_one_per_image_in_zero_to_one(fitted_run, dataset_dir):
    model = tlearn.load_model(fitted_run)
    pixels = np.stack([load_rgb(dataset_dir / name / f"{name}0.jpg", 32) for name in CLASS_COLOURS])
    probabilities, heatmaps = gradcam(model, pixels)
    np.testing.assert_allclose(probabilities, model(pixels).numpy(), atol=1e-5)  # the model's own output
    assert heatmaps.shape == (3, 2, 2) and 0 <= heatmaps.min() and heatmaps.max() <= 1
    one_probabilities, one_heatmap = gradcam(model, pixels[1], class_index=0)
    assert one_probabilities.shape == (3,) and one_heatmap.shape == (2, 2)
    with pytest.raises(ValueError, match="class_index must be between 0 and 2"):
        gradcam(model, pixels, class_index=3)


def test_heatmaps_follow_the_logits_whatever_the_temperature(fitted_run, dataset_dir):
    model = tlearn.load_model(fitted_run)
    hotter = tlearn.load_model(fitted_run)
    set_temperature(hotter, 2 * temperature_of(model))
    pixels = np.stack([load_rgb(dataset_dir / name / f"{name}1.jpg", 32) for name in CLASS_COLOURS])
    probabilities, heatmaps = gradcam(model, pixels)
    hotter_probabilities, hotter_heatmaps = gradcam(hotter, pixels)
    np.testing.assert_allclose(hotter_heatmaps, heatmaps, atol=1e-4)
    assert heatmaps.max() > 0 and not np.allclose(hotter_probabilities, probabilities)


def test_overlay_is_the_image_size_and_coloured_where_the_heat_is():
    image = np.full((30, 50, 3), 128, np.uint8)
    heatmap = np.array([[1.0, 0.0], [0.0, 0.0]])
    blended = overlay(image, heatmap)
    assert blended.shape == (30, 50, 3) and blended.dtype == np.uint8
    hot, cold = blended[2, 2].astype(int), blended[27, 47].astype(int)
    assert hot[0] - hot[2] > 40 and cold[2] - cold[0] > 40  # jet: red at the hot corner, blue far from it


def test_cli_writes_one_figure_per_image_titled_with_its_class(fitted_run, dataset_dir, tmp_path):
    images = [dataset_dir / "rain" / "rain1.jpg", dataset_dir / "sunrise" / "sunrise1.jpg",
              dataset_dir / "cloudy" / "cloudy1.jpg"]
    out = tmp_path / "explained"
    result = run_cli("explain", *images, "--model", fitted_run, "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["cloudy1-gradcam.jpg", "rain1-gradcam.jpg",
                                                     "sunrise1-gradcam.jpg"]
    for image in images:
        figure = Image.open(out / f"{image.stem}-gradcam.jpg")
        assert figure.format == "JPEG" and figure.width > figure.height  # the image beside its overlay
        assert figure.info["comment"].decode().startswith(f"{image.name}: predicted {image.parent.name} ")
        assert f"{image}  {image.parent.name} " in result.stdout
    assert result.stdout.splitlines()[-1] == f"3 explanations in {out}"


def test_folder_with_an_unreadable_file_warns_and_explains_the_rest(fitted_run, dataset_dir, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(dataset_dir / "rain" / "rain2.jpg", folder)
    (folder / "notes.jpg").write_text("not a picture\n")
    result = run_cli("explain", folder, "--model", fitted_run, "--out", tmp_path / "out", "--no-progress")
    assert result.exit_code == 1
    assert f"Warning: skipped {folder / 'notes.jpg'}: not an image\n" in result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["rain2-gradcam.jpg"]


def test_images_of_the_same_name_get_their_own_figures(fitted_run, dataset_dir, tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        shutil.copy(dataset_dir / "rain" / "rain3.jpg", tmp_path / name / "photo.jpg")
    import tlearn.explanation  # the module: its name must not hide the function tlearn.explain

    explained = tlearn.explain([tmp_path / "a", tmp_path / "b"], model=fitted_run, out=tmp_path / "out")
    assert [e.label for e in explained] == ["rain", "rain"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["photo-2-gradcam.jpg", "photo-gradcam.jpg"]


def test_bad_image_path_is_one_line_error(fitted_run, tmp_path):
    result = run_cli("explain", tmp_path / "nope.jpg", "--model", fitted_run, "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert result.output == f"Error: {tmp_path / 'nope.jpg'}: no such file or folder (give image files, folders or globs)\n"
    assert not (tmp_path / "out").exists()


def test_default_out_is_explanations_beside_the_command(run_copy, dataset_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(run_copy.parent.parent)  # ./models/colours is the newest run
    result = run_cli("explain", dataset_dir / "rain" / "rain4.jpg", "--no-progress")
    assert result.exit_code == 0, result.output
    assert (run_copy.parent.parent / "explanations" / "rain4-gradcam.jpg").is_file()


def _read_gallery(report_dir):
    with open(report_dir / "worst_errors.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_error_gallery_pictures_exist_and_the_csv_names_them(fitted_run, dataset_dir, tmp_path):
    wrong = [{"path": str(dataset_dir / "rain" / f"rain{n}.jpg"), "true": "rain", "predicted": "cloudy",
              "probability": 0.9 - n / 100} for n in range(5)]
    wrong.insert(1, {"path": str(dataset_dir / "rain" / "truncated.jpg"), "true": "rain", "predicted": "cloudy",
                     "probability": 0.95})  # unreadable: left out
    rows = write_error_gallery(tlearn.load_model(fitted_run), wrong, tmp_path, limit=3)
    written = _read_gallery(tmp_path)
    assert [row["path"] for row in written] == [wrong[i]["path"] for i in (0, 2, 3)] == [r["path"] for r in rows]
    assert list(written[0]) == ["path", "true", "predicted", "probability", "thumbnail", "gradcam"]
    assert [row["gradcam"] for row in written] == ["errors/01-gradcam.jpg", "errors/02-gradcam.jpg",
                                                   "errors/03-gradcam.jpg"]
    for row in written:
        thumbnail, heatmap = Image.open(tmp_path / row["thumbnail"]), Image.open(tmp_path / row["gradcam"])
        assert thumbnail.size == heatmap.size == (48, 48)  # at most 256 px: small images keep their size
    assert sorted(p.name for p in (tmp_path / "errors").iterdir()) == sorted(
        name for row in written for name in (row["thumbnail"][7:], row["gradcam"][7:]))


def test_fit_and_evaluate_reports_carry_the_gallery(fitted_run, run_copy, dataset_dir, tmp_path):
    assert _read_gallery(fitted_run / "report") == []  # fit's test split: no errors on separable colours
    mislabelled = make_class_folders(tmp_path / "relabelled", per_class=3)
    for number in range(3):  # rain pictures filed as cloudy: confidently wrong
        shutil.copy(dataset_dir / "rain" / f"rain{number + 5}.jpg", mislabelled / "cloudy" / f"cloudy{number}.jpg")
    result = run_cli("evaluate", run_copy, "--data", mislabelled, "--no-progress")
    assert result.exit_code == 0, result.output
    report = run_copy / "report" / "evaluate-relabelled"
    written = _read_gallery(report)
    assert [(row["true"], row["predicted"]) for row in written] == [("cloudy", "rain")] * 3
    assert all((report / row["thumbnail"]).is_file() and (report / row["gradcam"]).is_file() for row in written)
