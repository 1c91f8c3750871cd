"""Defaults for every command, in one place: the CLI, the API and the README read them here."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

WEIGHTS_ENV = "TLEARN_WEIGHTS"
PREPROCESS_ENV = "TLEARN_PREPROCESS"
CACHE_ENV = "TLEARN_CACHE_DIR"
WORKER_TIMEOUT_ENV = "TLEARN_WORKER_TIMEOUT"

DEFAULT_MODELS_DIR = "models"
AUGMENT_STRENGTHS = ("none", "light", "medium", "strong")
PREPROCESS_MODES = ("caffe", "torch")
MIXED_PRECISION_MODES = ("auto", "on", "off")
STRATEGIES = ("auto", "none", "mirrored", "multi-worker")
# How long a worker waits for its peers, at start-up and in each collective op, before it
# gives up. Generous, because a worker whose activations are already cached waits for the
# others to finish embedding; a worker that crashes is noticed at once anyway.
DEFAULT_WORKER_TIMEOUT_SECONDS = 1800.0


@dataclass(frozen=True)
class FitConfig:
    """Settings of `tlearn fit`; every field is a keyword of `tlearn.fit`."""

    image_size: int = 224  # VGG16's native size; 160 costs about a third as much on a CPU
    val_split: float = 0.15
    test_split: float = 0.15
    seed: int = 1337
    epochs: int = 30
    patience: int = 5  # epochs without a better validation loss before stopping
    batch_size: int = 32
    lr: float = 1e-3
    dense_units: int = 256
    dropout: float = 0.5
    # Augmented views per training image, each passed through the frozen base once and
    # cached. 1 = the plain image only: on a CPU every extra view costs a full VGG16 pass.
    views: int = 1
    augment: str = "medium"
    # Also cache the activations at finetune's default cut (block4_pool, --unfreeze 4), which
    # the pass to fit's cut computes anyway: finetune then embeds only the views fit did not
    # make. Costs disk only: 14x14x512 float16, ~200 KB per image and view at 224 px (4x fit's).
    finetune_cache: bool = True
    preview_augment: bool = False  # write report/augmentation.png: what the model trains on
    # Near-duplicates (resized, re-encoded, cropped copies) share a subset like exact ones; the
    # threshold is in bits of a 256-bit hash (see check.py), -1 = group exact duplicates only.
    near_threshold: int = 24
    keep_cross_class_duplicates: bool = False
    mixed_precision: str = "auto"
    # auto = MirroredStrategy over 2+ GPUs, else one device; multi-worker reads $TF_CONFIG.
    strategy: str = "auto"


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of `tlearn finetune`; every field is a keyword of `tlearn.finetune`."""

    unfreeze: int = 4  # the top 4 layers of VGG16 = all of block5 (3 convolutions + pooling)
    # With augmented views the weather set still improved at epoch 10; early stopping ends
    # it sooner when validation loss stops falling.
    epochs: int = 20
    patience: int = 3
    batch_size: int = 32
    # Small, so the pretrained features are adjusted, not wrecked. Best validation loss on the
    # weather set (160 px, 3 views): 0.048 at 1e-5 (still falling when stopped), 0.033 at 3e-5,
    # 0.062 at 1e-4 (overfit by epoch 3).
    lr: float = 3e-5
    # Views per training image (see FitConfig.views), augmented with the run's --augment.
    # Unfrozen convolutions overfit a small set within an epoch or two: on the weather set,
    # fine-tuning on the plain images only left the validation loss where fit had it, with
    # 3 views it halved it. Each extra view costs one pass to the cut per training image.
    views: int = 3
    mixed_precision: str = "auto"
    strategy: str = "auto"


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
