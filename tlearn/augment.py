"""Keras augmentation layers for photographs, used only to make training views."""

from __future__ import annotations

import keras
from keras import layers

from .config import AUGMENT_STRENGTHS
from .errors import TlearnError

# Fraction of a turn / of the image size / of contrast; no vertical flip, since sky above
# ground is part of what a weather or landscape photo means.
_STRENGTH = {"light": 0.05, "medium": 0.1, "strong": 0.2}


def build_augmenter(strength: str = "medium", seed: int = 0) -> keras.Sequential | None:
    """Random flip, rotation, zoom, translation and contrast; None for strength `none`.

    Active only with `training=True`, and never part of the exported model.
    """
    if strength not in AUGMENT_STRENGTHS:
        raise TlearnError(f"--augment must be one of {', '.join(AUGMENT_STRENGTHS)}, got {strength!r}")
    if strength == "none":
        return None
    amount = _STRENGTH[strength]
    return keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=seed),
            layers.RandomRotation(amount / 2, fill_mode="reflect", seed=seed + 1),
            layers.RandomZoom((-amount, amount), fill_mode="reflect", seed=seed + 2),
            layers.RandomTranslation(amount, amount, fill_mode="reflect", seed=seed + 3),
            layers.RandomContrast(amount * 2, seed=seed + 4),
        ],
        name=f"augment_{strength}",
    )
