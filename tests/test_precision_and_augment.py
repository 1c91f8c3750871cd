import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import tlearn

from conftest import FAST_FIT, make_class_folders, run_cli
from tlearn.augment import build_augmenter
from tlearn.errors import TlearnError
from tlearn.data.images import load_rgb
from tlearn.precision import apply_precision_policy, policy_for
from tlearn.settings import FinetuneSettings


@pytest.fixture
def restore_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize(
    "mode, gpu_visible, policy",
    [("auto", True, "mixed_float16"), ("auto", False, "float32"), ("on", False, "mixed_float16"),
     ("off", True, "float32")],
)
def test_each_mode_means_one_policy_with_and_without_a_gpu(mode, gpu_visible, policy):
    assert policy_for(mode, gpu_visible) == policy


def test_auto_is_float32_on_this_cpu(restore_policy):
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is visible here")
    assert apply_precision_policy("auto") == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"


def test_bad_mode_is_a_clear_error():
    with pytest.raises(TlearnError, match="--mixed-precision must be one of auto, on, off"):
        FinetuneSettings(mixed_precision="half")


def test_mixed_precision_fit_learns_and_exports_float32(tmp_path, restore_policy):
    data = make_class_folders(tmp_path / "colours", per_class=10)
    run = tmp_path / "run"
    result = run_cli("fit", data, "--out", run, *FAST_FIT, "--mixed-precision", "on", "--epochs", "30")
    assert result.exit_code == 0, result.output
    meta = json.loads((run / "tlearn.json").read_text())
    assert meta["stages"][0]["precision_policy"] == "mixed_float16"
    assert meta["stages"][0]["test_accuracy"] == 1.0
    model = keras.saving.load_model(run / "model.keras", safe_mode=True)
    assert model.get_layer("head_dense").compute_dtype == "float16"
    assert model.get_layer("probabilities").compute_dtype == "float32"
    serve = tf.saved_model.load(str(run / "saved_model")).signatures["serving_default"]
    pixels = load_rgb(next((data / "rain").glob("*.jpg")), 32)[None].astype("float32")
    (probabilities,) = serve(pixels=tf.constant(pixels)).values()
    assert probabilities.dtype == tf.float32
    assert abs(float(tf.reduce_sum(probabilities)) - 1.0) < 1e-3


def test_augmentation_changes_training_batches_only():
    augmenter = build_augmenter("medium", seed=1)
    pixels = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    first = keras.ops.convert_to_numpy(augmenter(pixels, training=True))
    second = keras.ops.convert_to_numpy(augmenter(pixels, training=True))
    assert not np.allclose(first, pixels) and not np.allclose(first, second)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(augmenter(pixels, training=False)), pixels)
    layer_names = [layer.__class__.__name__ for layer in augmenter.layers]
    assert layer_names == ["RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation", "RandomContrast"]
    assert augmenter.layers[0].mode == "horizontal"  # sky stays above ground
    assert build_augmenter("none") is None


def test_views_train_on_augmented_copies_and_export_no_augmentation(tmp_path):
    data = make_class_folders(tmp_path / "colours", per_class=6)
    run = tmp_path / "run"
    result = run_cli("fit", data, "--out", run, *FAST_FIT, "--epochs", "3", "--views", "3",
                     "--preview-augment", "--val-split", "0.2", "--test-split", "0.2")
    assert result.exit_code == 0, result.output
    assert (run / "report" / "augmentation.png").is_file()
    model_config = json.dumps(keras.saving.load_model(run / "model.keras", safe_mode=True).get_config())
    assert "Random" not in model_config
    # The export computes exactly what the model does at inference, with no random layer in it.
    serve = tf.saved_model.load(str(run / "saved_model")).signatures["serving_default"]
    pixels = np.stack([load_rgb(path, 32) for path in sorted(data.glob("*/*.jpg"))]).astype("float32")
    served = serve(pixels=tf.constant(pixels))["output_0"].numpy()
    model = tlearn.load_model(run)
    np.testing.assert_allclose(served, model(pixels, training=False).numpy(), atol=1e-5)
