"""The classifier: resize and preprocessing layers, the VGG16 body, and a new head.

Resizing and the weights' preprocessing are layers of the model, so the exported model takes
raw RGB pixels (0-255) of any size and nobody can get preprocessing wrong at prediction time.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import keras
import numpy as np
from keras import layers

from .data.files import file_sha256
from .data.images import RESIZE
from .errors import TlearnError

BASE_NAME = "vgg16"
PROBABILITIES = "probabilities"  # the output layer's name, in every version of the model
# Per-channel statistics each weight source was trained with (RGB order).
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="tlearn")
class ImagePreprocessing(layers.Layer):
    """Maps RGB pixels 0-255 to the input convention the base's weights were trained on.

    `caffe`: Keras's ImageNet VGG16 (BGR order, ImageNet means subtracted, no scaling).
    `torch`: torchvision's (RGB scaled to [0, 1], then standardised per channel).
    """

    def __init__(self, mode: str = "caffe", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("caffe", "torch"):
            raise ValueError(f"mode must be 'caffe' or 'torch', got {mode!r}")
        self.mode = mode

    def call(self, pixels):
        pixels = keras.ops.cast(pixels, self.compute_dtype)
        if self.mode == "torch":
            mean = keras.ops.convert_to_tensor(_TORCH_MEAN, self.compute_dtype)
            std = keras.ops.convert_to_tensor(_TORCH_STD, self.compute_dtype)
            return (pixels / 255.0 - mean) / std
        mean = keras.ops.convert_to_tensor(_CAFFE_MEAN_BGR, self.compute_dtype)
        return keras.ops.flip(pixels, axis=-1) - mean

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="tlearn")
class TemperatureSoftmax(layers.Layer):
    """softmax(logits / temperature): the classifier's calibrated probabilities.

    The temperature is a weight, so model.keras and the SavedModel carry it; it is not
    trained (1.0 until `set_temperature`, see calibration.py), and float32 under any policy.
    """

    def __init__(self, **kwargs):
        super().__init__(**{"dtype": "float32", **kwargs})

    def build(self, input_shape):
        self.temperature = self.add_weight(
            shape=(), initializer="ones", trainable=False, dtype="float32", name="temperature"
        )

    def call(self, logits):
        return keras.ops.softmax(keras.ops.cast(logits, "float32") / self.temperature, axis=-1)


def weights_identity(weights: str, seed: int) -> str:
    """What the base's numbers depend on: the activation cache's key and the run's record."""
    if weights == "imagenet":
        return "keras-imagenet"
    if weights == "none":
        return f"random-seed-{seed}"
    return "sha256:" + file_sha256(Path(weights))


def build_base(weights: str, image_size: int) -> keras.Model:
    """VGG16 without its classifier, with `weights` = `imagenet`, `none` or a weights file."""
    shape = (image_size, image_size, 3)
    if weights == "imagenet":
        try:
            return keras.applications.VGG16(weights="imagenet", include_top=False, input_shape=shape)
        except Exception as error:  # the download failed: urllib, SSL and HTTP errors alike
            raise TlearnError(
                f"could not download Keras's ImageNet VGG16 weights ({type(error).__name__}): "
                "without internet, pass a local file with --weights PATH (and --preprocess) "
                "or set TLEARN_WEIGHTS"
            ) from None
    base = keras.applications.VGG16(weights=None, include_top=False, input_shape=shape)
    if weights == "none":
        return base
    path = Path(weights)
    if not path.is_file():
        raise TlearnError(f"--weights {weights}: no such file (use imagenet, none or a weights file)")
    # Keras only warns about layers a weights file lacks, and leaves them random: that would
    # be a silently useless model, so any such warning is an error here.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            base.load_weights(path)
        except Exception as error:
            caught.append(warnings.WarningMessage(str(error), UserWarning, "", 0))
    problems = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    if problems:
        raise TlearnError(
            f"--weights {weights} does not fit a VGG16 base without its top: {problems[0]}".splitlines()[0]
        )
    return base


def build_classifier(
    class_names: list[str],
    image_size: int,
    weights: str,
    preprocess: str,
    dense_units: int = 256,
    dropout: float = 0.5,
    head_l2: float = 0.0,
) -> keras.Model:
    """pixels -> resize -> preprocess -> frozen VGG16 -> pooling -> Dense/ReLU/Dropout -> logits
    -> softmax(logits / temperature), the output layer named `probabilities`.

    `head_l2` penalises the squares of the head's kernels in the training loss (see
    FitSettings.head_l2); the penalty is part of the layers, so finetune trains with it too."""
    base = build_base(weights, image_size)
    base.trainable = False
    pixels = keras.Input((None, None, 3), name="pixels")
    # The resize of data.images.resize_for_model, which made the training pixels, in float32
    # under any dtype policy: the model given the decoded image computes what training saw.
    x = layers.Resizing(image_size, image_size, **RESIZE, dtype="float32", name="resize")(pixels)
    x = ImagePreprocessing(preprocess, name="preprocess")(x)
    x = base(x, training=False)  # keeps any normalisation layers in inference mode
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    penalty = keras.regularizers.L2(head_l2) if head_l2 else None
    x = layers.Dense(dense_units, activation="relu", kernel_regularizer=penalty, name="head_dense")(x)
    x = layers.Dropout(dropout, name="head_dropout")(x)
    # float32 even under mixed precision, so neither logits nor probabilities are float16
    logits = layers.Dense(len(class_names), dtype="float32", kernel_regularizer=penalty, name="logits")(x)
    probabilities = TemperatureSoftmax(name=PROBABILITIES)(logits)
    return keras.Model(pixels, probabilities, name="tlearn_classifier")


def set_temperature(model: keras.Model, temperature: float) -> None:
    """Build `temperature` into the classifier's probabilities (see calibration.fit_temperature)."""
    model.get_layer(PROBABILITIES).temperature.assign(float(temperature))


def temperature_of(model: keras.Model) -> float:
    return float(keras.ops.convert_to_numpy(model.get_layer(PROBABILITIES).temperature))


def base_of(model: keras.Model) -> keras.Model:
    return model.get_layer(BASE_NAME)


def cut_layer_name(model: keras.Model, unfreeze: int) -> str:
    """Name of the base layer just below the top `unfreeze` layers (0 = the base's output)."""
    base_layers = base_of(model).layers[1:]  # without the input layer
    if not 0 <= unfreeze < len(base_layers):
        raise TlearnError(
            f"--unfreeze {unfreeze} is out of range: VGG16 has {len(base_layers)} layers, "
            f"give 1 to {len(base_layers) - 1} (4 = block5)"
        )
    return base_layers[len(base_layers) - 1 - unfreeze].name


def set_trainable_top(model: keras.Model, unfreeze: int) -> list[str]:
    """Make exactly the top `unfreeze` base layers and the head trainable; returns their names."""
    base = base_of(model)
    base.trainable = True
    cut_index = [layer.name for layer in base.layers].index(cut_layer_name(model, unfreeze))
    for index, layer in enumerate(base.layers):
        layer.trainable = index > cut_index and not isinstance(layer, layers.BatchNormalization)
    return [layer.name for layer in base.layers if layer.trainable and layer.weights]


def feature_extractor(model: keras.Model, cut: str | list[str]) -> keras.Model:
    """The frozen part: pixels of the training size -> activations of base layer `cut`.

    With a list of cuts, the model has one output per cut, in that order, all from one pass:
    the lower cuts are computed on the way to the highest anyway.
    """
    cuts = [cut] if isinstance(cut, str) else list(cut)
    base_layers = base_of(model).layers[1:]  # without the input layer
    names = [layer.name for layer in base_layers]
    unknown = [name for name in cuts if name not in names]
    if unknown:
        raise ValueError(f"cut must name layers of the base ({', '.join(names)}), got {unknown[0]!r}")
    size = model.get_layer("resize").height
    pixels = keras.Input((size, size, 3), name="pixels")
    x = model.get_layer("preprocess")(pixels)
    output_of = {}
    for layer in base_layers[: max(names.index(name) for name in cuts) + 1]:
        x = layer(x, training=False)
        output_of[layer.name] = x
    outputs = output_of[cut] if isinstance(cut, str) else [output_of[name] for name in cuts]
    return keras.Model(pixels, outputs, name="frozen_to_" + "_and_".join(cuts))


def trainable_top(model: keras.Model, cut: str) -> keras.Model:
    """The part above `cut` up to the logits, sharing the model's layers: training it trains
    the model. It leaves out the temperature softmax, which is fitted after training."""
    base = base_of(model)
    names = [layer.name for layer in base.layers]
    activations = keras.Input(base.get_layer(cut).output.shape[1:], name=f"{cut}_activations")
    x = activations
    for layer in base.layers[names.index(cut) + 1 :]:
        x = layer(x, training=False) if isinstance(layer, layers.BatchNormalization) else layer(x)
    head = model.layers[[layer.name for layer in model.layers].index(BASE_NAME) + 1 :]
    for layer in head:
        if layer.name == PROBABILITIES:
            break
        x = layer(x)
    return keras.Model(activations, x, name=f"top_from_{cut}")


def classifier_weights(loaded: keras.Model) -> list:
    """The weights of a loaded classifier in the order of the current architecture.

    Runs made before temperature scaling end in a softmax Dense named `probabilities`: its
    kernel and bias are the logits layer's now, and their temperature is 1 (uncalibrated).
    """
    weights = loaded.get_weights()
    if isinstance(loaded.get_layer(PROBABILITIES), layers.Dense):
        weights.append(np.ones((), np.float32))
    return weights


def load_classifier(path: Path) -> keras.Model:
    """Load a run's model.keras in safe mode: no arbitrary code from the file runs."""
    if not Path(path).is_file():
        raise TlearnError(f"{path} does not exist: the run is incomplete; fit it again")
    # Keras answers "File not found" for any file that is not a zip archive.
    if not zipfile.is_zipfile(path):
        raise TlearnError(f"{path} is not a valid Keras file (not a .keras zip archive): the run is damaged; fit it again")
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise TlearnError(f"{path} is not a valid Keras file ({error}".splitlines()[0] + "): fit the run again") from None
