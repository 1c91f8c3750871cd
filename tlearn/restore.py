"""Rebuilding a run's model and activation cache from what tlearn.json recorded."""

from __future__ import annotations

from pathlib import Path

import keras

from .activations import ActivationCache
from .config import default_cache_root
from .export import MODEL_FILE
from .model import build_classifier, load_classifier


def rebuild_model(run_dir: Path, metadata: dict) -> keras.Model:
    """The run's architecture under the current dtype policy, with model.keras's weights.

    Building anew (rather than using the loaded model as is) lets each stage choose its own
    precision policy; loading is in safe mode, so the file cannot run code.
    """
    model = build_classifier(
        metadata["class_names"], metadata["image_size"], "none", metadata["preprocess"],
        metadata["dense_units"], metadata["dropout"],
    )
    model.set_weights(load_classifier(run_dir / MODEL_FILE).get_weights())
    return model


def activation_cache(
    weights_identity: str, preprocess: str, image_size: int, cut: str, policy: str,
    augment_key: str = "none", cache_dir: str | Path | None = None,
) -> ActivationCache:
    """The cache for one configuration; `augment_key` names the augmented views."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    cache = ActivationCache.for_config(
        root, weights=weights_identity, preprocess=preprocess, image_size=image_size, cut=cut, policy=policy
    )
    return cache.with_augment_key(augment_key)


def augment_key(augment: str, seed: int) -> str:
    """Names a run's augmented views in the cache: fit and finetune must agree on it."""
    return f"{augment}-seed{seed}"


def run_activation_cache(metadata: dict, cut: str, policy: str, cache_dir: str | Path | None = None) -> ActivationCache:
    return activation_cache(
        metadata["weights_identity"], metadata["preprocess"], metadata["image_size"], cut, policy,
        augment_key(metadata["augment"], metadata["split"]["seed"]), cache_dir,
    )
