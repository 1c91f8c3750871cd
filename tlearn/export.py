"""Writing a trained classifier in the forms people deploy and reload."""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import tensorflow as tf

from .run import RunFiles

SERVING_INPUT = "pixels"


def export_classifier(model: keras.Model, class_names: list[str], files: RunFiles) -> None:
    """saved_model/ (serving_default: float32 [N, H, W, 3] RGB 0-255 -> probabilities),
    model.keras (for further training) and labels.txt (one class per output index)."""
    signature = tf.TensorSpec([None, None, None, 3], tf.float32, name=SERVING_INPUT)
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # export logs every traced function at INFO/WARNING
    try:
        model.export(str(files.saved_model), format="tf_saved_model", input_signature=[signature], verbose=False)
    finally:
        absl_logger.setLevel(level)
    model.save(files.model)
    files.labels.write_text("".join(f"{name}\n" for name in class_names), encoding="utf-8")


def load_serving_function(saved_model_dir: Path):
    """The `serving_default` signature of an exported model, loaded with plain TensorFlow."""
    return tf.saved_model.load(str(saved_model_dir)).signatures["serving_default"]
