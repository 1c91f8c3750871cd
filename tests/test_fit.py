import csv
import json
import os
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import FAST_FIT, cached_activation_entries, make_class_folders, run_cli
from tlearn.data.images import load_rgb
from tlearn.model import feature_extractor
from tlearn.prediction import predict
from tlearn.run import Run
from tlearn.train.activations import run_activation_cache

RUN_FILES = [
    "saved_model/saved_model.pb", "model.keras", "labels.txt", "tlearn.json", "split.csv",
    "report/metrics.json", "report/classification_report.txt", "report/confusion_matrix.png",
    "report/history.csv", "report/curves.png",
]


def test_fit_writes_every_artifact(fitted_run):
    for name in RUN_FILES:
        assert (fitted_run / name).is_file(), name
    assert (fitted_run / "labels.txt").read_text() == "cloudy\nrain\nsunrise\n"
    assert not list(fitted_run.parent.glob(".tlearn-staging-*"))


def test_metadata_records_what_later_commands_need(fitted_run):
    meta = json.loads((fitted_run / "tlearn.json").read_text())
    assert meta["class_names"] == ["cloudy", "rain", "sunrise"]
    assert meta["image_size"] == 32 and meta["weights"] == "none" and meta["preprocess"] == "caffe"
    assert meta["split"]["seed"] == 1337
    # 42 plain JPEGs + the PNG named .jpg, grayscale, RGBA and GIF; the truncated JPEG is skipped
    assert sum(meta["split"]["sizes"].values()) == 14 * 3 + 4
    stage = meta["stages"][0]
    assert stage["name"] == "fit" and stage["settings"]["epochs"] == 40
    metrics = json.loads((fitted_run / "report" / "metrics.json").read_text())
    assert stage["test_accuracy"] == metrics["accuracy"]
    assert {"tensorflow", "keras"} <= set(meta["versions"])


def test_split_csv_lists_every_file_once_with_skipped_reasons(fitted_run):
    rows = list(csv.DictReader(open(fitted_run / "split.csv")))
    by_name = {row["path"].rsplit("/", 1)[-1]: row for row in rows}
    assert by_name["truncated.jpg"]["subset"] == "skipped"
    assert "truncated" in by_name["truncated.jpg"]["reason"]
    assert by_name["notes.jpg"]["reason"] == "not an image"
    assert by_name["empty.jpg"]["subset"] == "skipped"
    assert {row["subset"] for row in rows} == {"train", "validation", "test", "skipped"}
    assert len(rows) == len(by_name)


def test_separable_classes_are_learned(fitted_run):
    metrics = json.loads((fitted_run / "report" / "metrics.json").read_text())
    assert metrics["accuracy"] == 1.0
    assert np.trace(np.array(metrics["confusion_matrix"])) == metrics["images"]


def test_saved_model_loads_with_plain_tensorflow_and_agrees_with_predict(fitted_run, dataset_dir):
    paths = sorted((dataset_dir / "rain").glob("rain1*.jpg"))
    serve = tf.saved_model.load(str(fitted_run / "saved_model")).signatures["serving_default"]
    pixels = np.stack([load_rgb(p, 32) for p in paths]).astype("float32")
    (probabilities,) = serve(pixels=tf.constant(pixels)).values()
    assert probabilities.dtype == tf.float32
    results = predict(paths, model=fitted_run, top_k=3)
    for row, result in zip(probabilities.numpy(), results):
        assert result.label == "rain"
        np.testing.assert_allclose([item["probability"] for item in result.top_k], np.sort(row)[::-1], rtol=1e-5)
    # any size goes in: the model resizes itself
    (large,) = serve(pixels=tf.fill([1, 97, 61, 3], 128.0)).values()
    assert large.shape == (1, 3)


def test_second_fit_gets_a_new_directory_and_out_is_never_overwritten(tmp_path):
    data = make_class_folders(tmp_path / "shapes", per_class=4)
    models = tmp_path / "models"
    quick = [*FAST_FIT, "--epochs", "1", "--val-split", "0.25", "--test-split", "0.25"]
    assert run_cli("fit", data, "--models-dir", models, *quick).exit_code == 0
    second = run_cli("fit", data, "--models-dir", models, *quick)
    assert second.exit_code == 0, second.output
    assert f"Run: {models / 'shapes-2'}" in second.output
    taken = run_cli("fit", data, "--out", models / "shapes", *quick)
    assert taken.exit_code == 2
    assert taken.output.strip().splitlines()[-1].startswith("Error: --out")
    assert json.loads((models / "shapes" / "tlearn.json").read_text())["stages"][0]["name"] == "fit"


@pytest.mark.parametrize(
    "args, message",
    [
        (["{missing}"], "does not exist"),
        (["{data}", "--val-split", "0.7", "--test-split", "0.5"], "--val-split + --test-split"),
        (["{data}", "--epochs", "0"], "--epochs must be at least 1"),
        (["{data}", "--image-size", "16"], "--image-size must be at least 32"),
        (["{data}", "--weights", "{missing}"], "--weights"),
        (["{data}", "--preprocess", "tf"], "Invalid value for '--preprocess'"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, args, message):
    data = make_class_folders(tmp_path / "data", per_class=3)
    filled = [a.format(data=data, missing=tmp_path / "missing") for a in args]
    result = run_cli("fit", "--models-dir", tmp_path / "models", "--no-progress", "--image-size", "32", *filled)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    if message != "Invalid value for '--preprocess'":
        assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_offline_imagenet_download_is_a_clear_error(tmp_path, monkeypatch):
    keras_home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")
    cached = keras_home / "models" / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    if cached.exists():
        pytest.skip("Keras's ImageNet VGG16 weights are cached here: no download to fail")
    data = make_class_folders(tmp_path / "data", per_class=6)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # no way out, even with internet
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    result = run_cli("fit", data, "--weights", "imagenet", "--models-dir", tmp_path / "models", "--no-progress")
    assert result.exit_code == 2
    assert "could not download Keras's ImageNet VGG16 weights" in result.output
    assert "--weights PATH" in result.output


# fit also caches the activations at finetune's default cut (block4_pool) from its own pass.

QUICK_FIT = [*FAST_FIT, "--epochs", "1", "--patience", "1", "--val-split", "0.25", "--test-split", "0.25"]


def cached_entries(cache_dir: Path, cut: str) -> dict:
    """Every activation entry cached at layer `cut` under `cache_dir`, with where it is stored."""
    return cached_activation_entries(cache_dir, cut)


def split_rows(run_dir: Path) -> list[dict]:
    return [row for row in csv.DictReader(open(run_dir / "split.csv")) if row["subset"] != "skipped"]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    return make_class_folders(tmp_path_factory.mktemp("small") / "colours", per_class=4)


def fit_with_own_cache(data: Path, tmp_path: Path, *options: str) -> tuple[Path, Path]:
    """(run directory, cache folder) of a quick fit whose activations go to a fresh cache."""
    cache = tmp_path / "cache"
    result = run_cli("fit", data, "--out", tmp_path / "run", "--cache-dir", cache, *QUICK_FIT, *options)
    assert result.exit_code == 0, result.output
    return tmp_path / "run", cache


def test_finetune_after_fit_embeds_nothing_again(small_data, tmp_path):
    run, cache = fit_with_own_cache(small_data, tmp_path)
    after_fit = cached_entries(cache, "block4_pool")
    assert set(after_fit) == {f"{row['sha256']}-plain" for row in split_rows(run)}
    assert json.loads((run / "tlearn.json").read_text())["stages"][0]["settings"]["finetune_cache"] is True

    result = run_cli("finetune", run, "--unfreeze", "4", "--views", "1", "--epochs", "1", "--cache-dir", cache,
                     "--no-progress")
    assert result.exit_code == 0, result.output
    assert cached_entries(cache, "block4_pool") == after_fit  # no new entry, none rewritten


def test_fit_caches_for_finetune_what_the_extractor_computes(small_data, tmp_path):
    run, cache_dir = fit_with_own_cache(small_data, tmp_path)
    metadata = json.loads((run / "tlearn.json").read_text())
    cache = run_activation_cache(Run.open(run), "block4_pool", "float32", cache_dir)  # where finetune looks
    rows = split_rows(run)
    model = keras.saving.load_model(run / "model.keras", safe_mode=True)
    pixels = np.stack([load_rgb(Path(metadata["data_dir"]) / row["path"], 32) for row in rows]).astype("float32")
    expected = feature_extractor(model, "block4_pool").predict(pixels, verbose=0)
    cached = np.stack([cache.load(row["sha256"], 0) for row in rows]).astype("float32")
    assert cached.shape == expected.shape == (len(rows), 2, 2, 512)
    # float16 storage is the only difference
    np.testing.assert_allclose(cached, expected, rtol=2e-3, atol=1e-3 * np.abs(expected).max())


def test_no_finetune_cache_stores_only_fits_own_cut(small_data, tmp_path):
    run, cache = fit_with_own_cache(small_data, tmp_path, "--no-finetune-cache")
    assert cached_entries(cache, "block4_pool") == {}
    assert len(cached_entries(cache, "block5_pool")) == len(split_rows(run))
    assert json.loads((run / "tlearn.json").read_text())["stages"][0]["settings"]["finetune_cache"] is False


def test_augmented_views_of_fit_serve_finetune_too(small_data, tmp_path):
    run, cache = fit_with_own_cache(small_data, tmp_path, "--views", "2")
    after_fit = cached_entries(cache, "block4_pool")
    train = [row for row in split_rows(run) if row["subset"] == "train"]
    assert sum(name.endswith("-v1") for name in after_fit) == len(train)

    result = run_cli("finetune", run, "--views", "2", "--epochs", "1", "--cache-dir", cache, "--no-progress")
    assert result.exit_code == 0, result.output
    assert cached_entries(cache, "block4_pool") == after_fit
