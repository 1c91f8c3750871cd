"""Writing a trained classifier in the forms people deploy and reload.

The SavedModel has two signatures: `serving_default` takes decoded pixels, `serving_bytes`
takes the encoded files themselves (what TensorFlow Serving's REST API sends as base64) and
decodes them in the graph as tlearn's loader (data/images.py) does, as far as TensorFlow's
decoders allow: see `decode_in_graph`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import tensorflow as tf

from .data.images import RESIZE
from .run import RunFiles

SERVING_INPUT = "pixels"
BYTES_SIGNATURE = "serving_bytes"
BYTES_INPUT = "image_bytes"  # TF Serving and Vertex AI decode {"b64": ...} for inputs named *_bytes


def export_classifier(model: keras.Model, class_names: list[str], files: RunFiles) -> None:
    """saved_model/ (serving_default: float32 [N, H, W, 3] RGB 0-255 -> probabilities;
    serving_bytes: tf.string [N] of encoded JPEG/PNG/GIF/BMP files -> probabilities),
    model.keras (for further training) and labels.txt (one class per output index)."""
    image_size = model.get_layer("resize").height
    archive = keras.export.ExportArchive()
    # As model.export(format="tf_saved_model") does: the first endpoint is also serving_default.
    archive.track_and_add_endpoint(
        "serve", model, input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name=SERVING_INPUT)]
    )

    def classify_encoded(image_bytes):
        pixels = tf.map_fn(lambda data: decode_in_graph(data, image_size), image_bytes,
                           fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32))
        return model(pixels, training=False)

    archive.add_endpoint(BYTES_SIGNATURE, classify_encoded,
                         input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)])
    write_saved_model(archive, files.saved_model)
    model.save(files.model)
    files.labels.write_text("".join(f"{name}\n" for name in class_names), encoding="utf-8")


def write_saved_model(archive, folder: Path) -> None:
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # export logs every traced function at INFO/WARNING
    try:
        archive.write_out(str(folder), verbose=False)
    finally:
        absl_logger.setLevel(level)


def decode_in_graph(data: tf.Tensor, image_size: int) -> tf.Tensor:
    """One encoded image -> `image_size` x `image_size` x 3 float32 RGB 0-255, as load_rgb makes it.

    Matched: JPEG decoded with the accurate integer DCT (Pillow's), grayscale replicated to RGB,
    transparency (PNG alpha, palette transparency, gray+alpha) composited on white, a GIF's first
    frame, and the same antialiased resize. Not matched (TensorFlow's decoders cannot): EXIF
    orientation, transparent GIF pixels, 16-bit grayscale scaled by its brightest pixel, the
    reduction of images over 40 megapixels, CMYK JPEGs, palette BMPs and WEBP.
    """
    decoded = tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=0, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(data, channels=0, dtype=tf.uint8, expand_animations=False),
    )
    rgb = tf.switch_case(tf.shape(decoded)[-1] - 1, branch_fns=[
        lambda: tf.tile(decoded[..., :1], [1, 1, 3]),
        lambda: _on_white(tf.tile(decoded[..., :1], [1, 1, 3]), decoded[..., 1:2]),
        lambda: decoded[..., :3],
        lambda: _on_white(decoded[..., :3], decoded[..., 3:4]),
    ])
    rgb = tf.ensure_shape(rgb, [None, None, 3])
    resized = tf.image.resize(rgb, (image_size, image_size), method=RESIZE["interpolation"],
                              antialias=RESIZE["antialias"])
    return tf.cast(resized, tf.float32)


def _on_white(rgb: tf.Tensor, alpha: tf.Tensor) -> tf.Tensor:
    """`rgb` over a white background through `alpha`, rounded to whole values as Pillow's paste does."""
    opacity = tf.cast(alpha, tf.float32) / 255.0
    blended = tf.cast(rgb, tf.float32) * opacity + 255.0 * (1.0 - opacity)
    return tf.cast(tf.clip_by_value(tf.round(blended), 0, 255), tf.uint8)


def load_serving_function(saved_model_dir: Path, signature: str = "serving_default"):
    """A signature of an exported model (`serving_default` or `serving_bytes`), loaded with plain TensorFlow."""
    return tf.saved_model.load(str(saved_model_dir)).signatures[signature]
