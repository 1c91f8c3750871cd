"""Every command's settings in one place: defaults, help text and checks.

The API functions list these fields as their keyword arguments, the CLI builds its options
from them (cli.py), and tlearn.json records them: `--help`, the API and a run never disagree.
Each dataclass validates itself on construction, so a bad value is one TlearnError that
names the option, whichever way it came in.
"""

from __future__ import annotations

import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import TlearnError

WEIGHTS_ENV = "TLEARN_WEIGHTS"
PREPROCESS_ENV = "TLEARN_PREPROCESS"
CACHE_ENV = "TLEARN_CACHE_DIR"
WORKER_TIMEOUT_ENV = "TLEARN_WORKER_TIMEOUT"

DEFAULT_MODELS_DIR = "models"
# check --labels writes its CSV here, in the current folder: never into the data folder it checks.
DEFAULT_CHECK_CSV = "label_issues.csv"
# Beside where the command runs, like models/: a run directory holds what fit and finetune
# wrote (a later stage would leave explanations of an earlier model in it), and may be shared
# or read-only.
DEFAULT_EXPLANATIONS_DIR = "explanations"
AUGMENT_STRENGTHS = ("none", "light", "medium", "strong")
PREPROCESS_MODES = ("caffe", "torch")
MIXED_PRECISION_MODES = ("auto", "on", "off")
STRATEGIES = ("auto", "none", "mirrored", "multi-worker")
ENGINES = ("auto", "float32", "int8")
# How long a worker waits for its peers, at start-up and in each collective op, before it
# gives up. Generous, because a worker whose activations are already cached waits for the
# others to finish embedding; a worker that crashes is noticed at once anyway.
DEFAULT_WORKER_TIMEOUT_SECONDS = 1800.0
# Below this many images a class gets one or two test images at the default 15 % split, so its
# scores say little: check lists such classes and fit warns about them.
FEW_IMAGES_PER_CLASS = 10


def setting(default: Any, help: str, *, choices: tuple[str, ...] | None = None, shown_default: str | None = None):
    """A settings field: its default, the CLI's help text and, for a choice, the allowed values."""
    return field(default=default, metadata={"help": help, "choices": choices, "shown_default": shown_default})


def _like(settings_class, name: str, default: Any, help: str | None = None):
    """`name` of `settings_class` with another default (and help): a subclass's own value."""
    metadata = dict(next(f for f in fields(settings_class) if f.name == name).metadata)
    return field(default=default, metadata={**metadata, "help": help or metadata["help"]})


@dataclass(frozen=True)
class TrainingSettings:
    """Settings that fit and finetune share; each command has its own defaults for them."""

    epochs: int = setting(30, "Most epochs to train.")
    patience: int = setting(5, "Stop after this many epochs without a better validation loss (the best weights are kept).")
    batch_size: int = setting(32, "Global batch size, split across all replicas.")
    lr: float = setting(1e-3, "Adam learning rate.")
    # Views per training image, each passed through the frozen layers once and cached.
    views: int = setting(1, "Views per training image: 1 = the plain image, more = add augmented copies "
                            "(each costs one pass through the frozen layers).")
    mixed_precision: str = setting("auto", "float16 compute: auto = on when a GPU is visible.",
                                   choices=MIXED_PRECISION_MODES)
    # auto = MirroredStrategy over 2+ GPUs, else one device; multi-worker reads $TF_CONFIG.
    strategy: str = setting("auto", "tf.distribute strategy: auto = mirrored over 2+ GPUs, else one device; "
                                    "multi-worker reads $TF_CONFIG (run the same command on every worker).",
                            choices=STRATEGIES)

    def __post_init__(self) -> None:
        _at_least(self, 1, "epochs", "batch_size", "views")
        _at_least(self, 0, "patience")
        if not self.lr > 0:
            raise TlearnError(f"--lr must be positive, got {self.lr}")
        _one_of(self, "mixed_precision", MIXED_PRECISION_MODES)
        _one_of(self, "strategy", STRATEGIES)

    def record(self) -> dict:
        """The settings as a stage of tlearn.json records them."""
        return asdict(self)


@dataclass(frozen=True)
class FitSettings(TrainingSettings):
    """Settings of `tlearn fit`; every field is a keyword of `tlearn.fit` with the same default."""

    weights: str | None = setting(
        None, "imagenet (Keras's download, cached), none (random) or a local weights file for the VGG16 base.",
        shown_default=f"${WEIGHTS_ENV} or imagenet")
    preprocess: str | None = setting(
        None, "Input convention of those weights: caffe (Keras's imagenet) or torch (torchvision's).",
        choices=PREPROCESS_MODES, shown_default=f"${PREPROCESS_ENV} or caffe")
    # VGG16's native size; 160 costs about a third as much on a CPU.
    image_size: int = setting(224, "Side in pixels the images are resized to; 160 is about 3x faster on a CPU.")
    val_split: float = setting(0.15, "Fraction of each class for validation.")
    test_split: float = setting(0.15, "Fraction of each class for the test report.")
    seed: int = setting(1337, "Seeds the split, initialisation and augmentation.")
    dense_units: int = setting(256, "Width of the head's hidden layer.")
    dropout: float = setting(0.5, "Dropout before the head's output layer.")
    # Weight decay keeps a network's logits from growing past what the data supports (Guo et
    # al. 2017, "On calibration of modern neural networks": less of it, worse calibration).
    # Weather set, 21 seeded splits (benchmarks/calibration.py): test log-loss 0.091 -> 0.084,
    # accuracy unchanged, ECE within its noise; 1e-4 did less. No harm on a 3-class subset or
    # at 40 images per class.
    head_l2: float = setting(1e-3, "L2 penalty on the head's weights (in the training loss): keeps its "
                                   "probabilities from growing over-confident; 0 = none.")
    augment: str = setting("medium", "Strength of the augmentation used for views 2 and up.", choices=AUGMENT_STRENGTHS)
    # The pass to fit's cut computes finetune's default cut (block4_pool, --unfreeze 4) on the
    # way: storing it spares finetune its own pass. Costs disk only: 14x14x512 float16, ~200 KB
    # per image and view at 224 px (4x fit's own cache).
    finetune_cache: bool = setting(
        True, "Also cache, from the same pass, the block4_pool activations that `tlearn finetune --unfreeze 4` "
              "trains on: it then embeds only the views fit did not (none after fit --views 3). Costs disk: "
              "~200 KB per image and view at 224 px (4x fit's own cache).")
    preview_augment: bool = setting(False, "Write report/augmentation.png: training images beside augmented samples of them.")
    # Near-duplicates (resized, re-encoded, cropped copies) share a subset like exact ones; the
    # threshold is in bits of a 256-bit hash (see data/check.py), -1 = exact duplicates only.
    near_threshold: int = setting(24, "Near-duplicates (bits of 256 that may differ) share a subset like exact "
                                      "duplicates; -1 = exact duplicates only.")
    keep_cross_class_duplicates: bool = setting(
        False, "Keep images whose exact copy is filed under another class (left out by default).")
    # float32 until auto's fallbacks are measured beyond one data set: int8 builds and quantises
    # an ONNX graph first (a minute at 224 px), which pays only on sets of some hundred images.
    engine: str = setting("float32", "Engine of the frozen part: int8 = a statically quantised ONNX Runtime graph "
                                     "(~4x faster on a CPU, checked against float32 on validation images); auto = "
                                     "int8 when ONNX Runtime is installed and the check passes.", choices=ENGINES)
    # 3 = one image each for training, validation and test: a class with fewer has no test
    # score (its F1 reads 0) and no say in early stopping, yet fit would report success.
    min_images_per_class: int = setting(
        3, "Refuse to train when a class has fewer usable images (3 = one each for training, validation "
           "and test); lower it to train anyway.")

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least(self, 1, "dense_units", "min_images_per_class")
        _check_image_size(self.image_size)
        check_fractions(self.val_split, self.test_split)
        if not 0 <= self.dropout < 1:
            raise TlearnError(f"--dropout must be in [0, 1), got {self.dropout}")
        if not self.head_l2 >= 0:
            raise TlearnError(f"--head-l2 must be 0 or more, got {self.head_l2}")
        _check_near_threshold(self.near_threshold)
        _one_of(self, "augment", AUGMENT_STRENGTHS)
        _one_of(self, "engine", ENGINES)
        weights, preprocess = resolve_weights(self.weights, self.preprocess)
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "preprocess", preprocess)

    def record(self) -> dict:
        """Weights and preprocessing belong to the model spec, not to the stage."""
        recorded = super().record()
        del recorded["weights"], recorded["preprocess"]
        return recorded


@dataclass(frozen=True)
class FinetuneSettings(TrainingSettings):
    """Settings of `tlearn finetune`; every field is a keyword of `tlearn.finetune`."""

    unfreeze: int = setting(4, "Base layers to train, counted from the top: 4 = block5 (3 convolutions + "
                               "pooling), 8 = blocks 4 and 5.")
    # With augmented views the weather set still improved at epoch 10; early stopping ends it
    # sooner when validation loss stops falling.
    epochs: int = _like(TrainingSettings, "epochs", 20)
    patience: int = _like(TrainingSettings, "patience", 3)
    # Small, so the pretrained features are adjusted, not wrecked. Best validation loss on the
    # weather set (160 px, 3 views): 0.048 at 1e-5 (still falling when stopped), 0.033 at 3e-5,
    # 0.062 at 1e-4 (overfit by epoch 3).
    lr: float = _like(TrainingSettings, "lr", 3e-5, "Adam learning rate; keep it small to keep the pretrained features.")
    # Unfrozen convolutions overfit a small set within an epoch or two: on the weather set,
    # fine-tuning on the plain images only left the validation loss where fit had it; with 3
    # views it halved it. Each extra view costs one pass to the cut per training image.
    views: int = _like(TrainingSettings, "views", 3,
                       "Views per training image: the plain one plus augmented copies (the run's --augment "
                       "strength); each costs one pass to the cut. Unfrozen layers overfit without them.")

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least(self, 1, "unfreeze")


@dataclass(frozen=True)
class CheckSettings:
    """Settings of `tlearn check` (fit runs the same check with its own image size and threshold)."""

    image_size: int = setting(FitSettings.image_size, "Training size: images under half of it on a side are "
                                                       "reported as tiny; with --labels, also the size they are "
                                                       "embedded at (as fit's).")
    near_threshold: int = setting(FitSettings.near_threshold, "How many of 256 hash bits a near-duplicate may "
                                                               "differ in; -1 = no near-duplicate search.")
    max_aspect_ratio: float = setting(3.0, "Images longer than this many times their width (or the reverse) are "
                                           "reported.")
    # Phone cameras write at most 48-50 megapixels in their full-resolution modes; beyond that
    # an image is rare in a photo dataset, and a full decode of one (~3 bytes a pixel) costs
    # 150 MB and more of memory and seconds of CPU in every command that reads it.
    max_megapixels: float = setting(50.0, "Images with more megapixels than this are reported as very large.")
    # Needs the network, so it is asked for: without it, check reads files only (no TensorFlow).
    labels: bool = setting(False, "Also rank suspected label errors: embed every usable image with the frozen base "
                                  "(into the activation cache fit uses, so a later fit reuses it) and flag those "
                                  "whose folder a cross-validated model disagrees with.")
    weights: str | None = _like(FitSettings, "weights", None)
    preprocess: str | None = _like(FitSettings, "preprocess", None)

    def __post_init__(self) -> None:
        _check_image_size(self.image_size)
        if self.labels:  # only --labels reads the weights: a plain check must not fail on $TLEARN_WEIGHTS
            weights, preprocess = resolve_weights(self.weights, self.preprocess)
            object.__setattr__(self, "weights", weights)
            object.__setattr__(self, "preprocess", preprocess)
        _check_near_threshold(self.near_threshold)
        if not self.max_aspect_ratio >= 1:
            raise TlearnError(f"--max-aspect-ratio must be at least 1, got {self.max_aspect_ratio}")
        if not self.max_megapixels > 0:
            raise TlearnError(f"--max-megapixels must be positive, got {self.max_megapixels}")


@dataclass(frozen=True)
class EvaluateSettings:
    """Settings of `tlearn evaluate`."""

    batch_size: int = setting(32, "Images per batch through the network.")
    show_wrong: int = setting(10, "How many of the most confidently wrong images to list.")

    def __post_init__(self) -> None:
        _at_least(self, 1, "batch_size")
        _at_least(self, 0, "show_wrong")


@dataclass(frozen=True)
class PredictSettings:
    """Settings of `tlearn predict` (--top-k is checked against the run's classes when it is opened)."""

    top_k: int = setting(1, "How many classes to list per image.")
    batch_size: int = setting(16, "Images per batch through the network.")

    def __post_init__(self) -> None:
        _at_least(self, 1, "top_k", "batch_size")


@dataclass(frozen=True)
class ExplainSettings:
    """Settings of `tlearn explain`."""

    # Small: each image keeps its block5_conv3 activations and their gradients for the pass.
    batch_size: int = setting(8, "Images per batch through the network.")
    # Enough colour to read the heatmap, enough image to see what it lies on.
    alpha: float = setting(0.4, "Opacity of the heatmap over the image, 0 to 1.")

    def __post_init__(self) -> None:
        _at_least(self, 1, "batch_size")
        if not 0 <= self.alpha <= 1:
            raise TlearnError(f"--alpha must be between 0 and 1, got {self.alpha}")


EXPORT_FORMATS = ("litert", "onnx")
QUANTIZATIONS = ("none", "float16", "dynamic", "int8")


@dataclass(frozen=True)
class ExportSettings:
    """Settings of `tlearn export`; every field is a keyword of `tlearn.export_model`."""

    # LiteRT first: the format phones and microcontrollers run, and the one needing no converter extra.
    format: str = setting("litert", "litert (.tflite, through ai-edge-litert) or onnx (.onnx, through onnxruntime).",
                          choices=EXPORT_FORMATS)
    quantize: str = setting("none", "none (float32), float16 (half the size), dynamic (int8 weights) or int8 "
                                    "(int8 weights and activations, calibrated on training images).",
                            choices=QUANTIZATIONS)
    # About 100 images is what the LiteRT and ONNX Runtime guides suggest for calibration: enough
    # to see each activation's range, and a few seconds per 100 images through VGG16 on a CPU.
    representative_images: int = setting(100, "int8: how many training images (stratified, seeded by the run's "
                                              "seed) calibrate the activation ranges.")

    def __post_init__(self) -> None:
        _one_of(self, "format", EXPORT_FORMATS)
        _one_of(self, "quantize", QUANTIZATIONS)
        _at_least(self, 1, "representative_images")


def settings_from(settings_class, arguments: dict[str, Any]):
    """`settings_class` built from the fields found in `arguments` (an API function's locals())."""
    return settings_class(**{f.name: arguments[f.name] for f in fields(settings_class) if f.name in arguments})


def field_default(spec) -> Any:
    return None if spec.default is MISSING else spec.default


def check_fractions(val_split: float, test_split: float) -> None:
    for name, value in (("--val-split", val_split), ("--test-split", test_split)):
        if not 0 < value < 1:
            raise TlearnError(f"{name} must be between 0 and 1 (exclusive), got {value}")
    if val_split + test_split >= 1:
        raise TlearnError(
            f"--val-split + --test-split must leave images for training, got {val_split} + {test_split}"
        )


def resolve_weights(weights: str | None, preprocess: str | None) -> tuple[str, str]:
    """Apply the environment defaults and check the pair; returns (weights, preprocess)."""
    weights = weights or default_weights()
    preprocess = preprocess or default_preprocess()
    if preprocess not in PREPROCESS_MODES:
        raise TlearnError(f"--preprocess must be one of {', '.join(PREPROCESS_MODES)}, got {preprocess!r}")
    if weights not in ("imagenet", "none"):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise TlearnError(f"--weights {weights}: no such file (use imagenet, none or a path to a weights file)")
        weights = str(path.resolve())
    return weights, preprocess


def _at_least(settings, minimum: int, *names: str) -> None:
    for name in names:
        value = getattr(settings, name)
        if value < minimum:
            raise TlearnError(f"--{name.replace('_', '-')} must be at least {minimum}, got {value}")


def _one_of(settings, name: str, allowed: tuple[str, ...]) -> None:
    value = getattr(settings, name)
    if value not in allowed:
        raise TlearnError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, got {value!r}")


def _check_image_size(image_size: int) -> None:
    if image_size < 32:
        raise TlearnError(f"--image-size must be at least 32 (VGG16 pools 5 times), got {image_size}")


def _check_near_threshold(near_threshold: int) -> None:
    if near_threshold > 256:
        raise TlearnError(f"--near-threshold must be at most 256 (bits of the hash), got {near_threshold}")


def default_weights() -> str:
    """`imagenet` unless TLEARN_WEIGHTS names another source (`none` or a file)."""
    return os.environ.get(WEIGHTS_ENV) or "imagenet"


def default_preprocess() -> str:
    """`caffe` (Keras's convention) unless TLEARN_PREPROCESS says otherwise."""
    return os.environ.get(PREPROCESS_ENV) or "caffe"


def default_cache_root() -> Path:
    """Activation and check caches: $TLEARN_CACHE_DIR or ~/.cache/tlearn. Safe to delete."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tlearn")


def default_worker_timeout() -> float:
    """Seconds a worker waits for its peers: $TLEARN_WORKER_TIMEOUT or 1800."""
    return float(os.environ.get(WORKER_TIMEOUT_ENV) or DEFAULT_WORKER_TIMEOUT_SECONDS)
