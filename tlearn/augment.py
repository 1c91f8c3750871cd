"""Keras augmentation layers for photographs, used only to make training views."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from keras import layers

from .settings import AUGMENT_STRENGTHS
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


def write_augmentation_preview(
    images: list[np.ndarray], augmenter: keras.Sequential, path: Path, columns: int = 6
) -> None:
    """A grid: each row one training image, plain first, then augmented samples of it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pixels = np.stack(images).astype("float32")
    samples = [pixels] + [keras.ops.convert_to_numpy(augmenter(pixels, training=True)) for _ in range(columns - 1)]
    figure, axes = plt.subplots(len(images), columns, figsize=(1.8 * columns, 1.8 * len(images)), squeeze=False)
    for row in range(len(images)):
        for column in range(columns):
            axes[row, column].imshow(np.clip(samples[column][row], 0, 255).astype("uint8"))
            axes[row, column].axis("off")
    axes[0, 0].set_title("original", fontsize=9)
    for column in range(1, columns):
        axes[0, column].set_title(f"augmented {column}", fontsize=9)
    figure.suptitle(f"training augmentation: {augmenter.name.removeprefix('augment_')}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
