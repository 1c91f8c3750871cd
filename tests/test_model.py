import keras
import numpy as np
import pytest

from tlearn.data.images import resize_for_model
from tlearn.errors import TlearnError
from tlearn.model import (
    ImagePreprocessing, build_base, build_classifier, cut_layer_name, feature_extractor, load_classifier,
    set_trainable_top, trainable_top,
)


@pytest.fixture(scope="module")
def classifier():
    keras.utils.set_random_seed(0)
    return build_classifier(["a", "b", "c"], 32, "none", "torch", dense_units=16)


def test_preprocessing_conventions():
    pixels = np.array([[[[255.0, 0.0, 128.0]]]], dtype="float32")
    torch = keras.ops.convert_to_numpy(ImagePreprocessing("torch")(pixels))[0, 0, 0]
    np.testing.assert_allclose(torch, [(1 - 0.485) / 0.229, -0.456 / 0.224, (128 / 255 - 0.406) / 0.225], rtol=1e-5)
    caffe = keras.ops.convert_to_numpy(ImagePreprocessing("caffe")(pixels))[0, 0, 0]
    np.testing.assert_allclose(caffe, [128 - 103.939, 0 - 116.779, 255 - 123.68], rtol=1e-5)


def test_classifier_takes_raw_pixels_of_any_size(classifier):
    for height, width in ((32, 32), (50, 71)):
        probabilities = classifier.predict(np.random.rand(2, height, width, 3).astype("float32") * 255, verbose=0)
        assert probabilities.shape == (2, 3)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)


def test_base_is_frozen_and_head_trainable(classifier):
    trainable = {layer.name for layer in classifier.layers if layer.trainable_weights}
    assert trainable == {"head_dense", "logits"}  # not the temperature: it is fitted, not trained


def test_cached_split_equals_the_whole_model(classifier):
    pixels = np.random.default_rng(1).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    for unfreeze in (0, 4, 8):
        cut = cut_layer_name(classifier, unfreeze)
        logits = trainable_top(classifier, cut)(feature_extractor(classifier, cut)(pixels))
        np.testing.assert_allclose(keras.ops.softmax(logits), classifier(pixels), rtol=1e-5, atol=1e-6)


def test_one_extractor_gives_several_cuts_in_the_order_asked(classifier):
    pixels = np.random.default_rng(2).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    cuts = ["block5_pool", "block3_pool"]
    together = feature_extractor(classifier, cuts)(pixels)
    assert len(together) == 2
    for cut, activations in zip(cuts, together):
        np.testing.assert_allclose(activations, feature_extractor(classifier, cut)(pixels), rtol=1e-5, atol=1e-6)


def test_extractor_rejects_a_cut_the_base_lacks(classifier):
    with pytest.raises(ValueError, match="cut must name layers of the base .*got 'block9_pool'"):
        feature_extractor(classifier, ["block5_pool", "block9_pool"])


@pytest.mark.parametrize("unfreeze, cut", [(0, "block5_pool"), (4, "block4_pool"), (8, "block3_pool")])
def test_cut_layer_counts_from_the_top(classifier, unfreeze, cut):
    assert cut_layer_name(classifier, unfreeze) == cut


@pytest.mark.parametrize("unfreeze", [-1, 18, 100])
def test_unfreeze_out_of_range_is_a_clear_error(classifier, unfreeze):
    with pytest.raises(TlearnError, match=f"--unfreeze {unfreeze} is out of range"):
        cut_layer_name(classifier, unfreeze)


def test_set_trainable_top_unfreezes_exactly_block5():
    model = build_classifier(["a", "b"], 32, "none", "caffe", dense_units=8)
    assert set_trainable_top(model, 4) == ["block5_conv1", "block5_conv2", "block5_conv3"]


def test_safe_mode_round_trip(classifier, tmp_path):
    classifier.save(tmp_path / "model.keras")
    loaded = load_classifier(tmp_path / "model.keras")
    pixels = np.full((1, 40, 40, 3), 100.0, dtype="float32")
    np.testing.assert_allclose(loaded(pixels), classifier(pixels), rtol=1e-6)


@pytest.mark.parametrize(
    "weights, message",
    [("/nowhere/vgg.h5", "no such file"), ("BAD_FILE", "does not fit a VGG16 base")],
)
def test_bad_weights_are_clear_errors(tmp_path, weights, message):
    if weights == "BAD_FILE":
        weights = str(tmp_path / "small.weights.h5")
        keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]).save_weights(weights)
    with pytest.raises(TlearnError, match=message):
        build_base(weights, 32)


def test_the_model_on_a_decoded_photo_equals_the_model_on_the_training_pixels(classifier):
    # Training and predict feed resize_for_model's pixels; the exported model is given the
    # decoded image itself. Both must come to the same pixels, hence the same probabilities.
    photo = np.random.default_rng(3).integers(0, 256, (400, 600, 3)).astype(np.uint8)
    resize = keras.Model(classifier.input, classifier.get_layer("resize").output)
    np.testing.assert_array_equal(resize(photo[None].astype("float32"))[0], resize_for_model(photo, 32))
    np.testing.assert_allclose(classifier(resize_for_model(photo, 32)[None]), classifier(photo[None].astype("float32")),
                               rtol=0, atol=1e-6)


def test_the_resize_layer_stays_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_classifier(["a", "b"], 32, "none", "torch", dense_units=8)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    photo = np.random.default_rng(4).uniform(0, 255, (1, 97, 131, 3)).astype("float32")
    resized = keras.Model(model.input, model.get_layer("resize").output)(photo)
    assert resized.dtype == "float32"
    np.testing.assert_array_equal(resized[0], resize_for_model(photo[0], 32))
