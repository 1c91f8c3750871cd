"""The one way tlearn opens and decodes an image file, and the words for why it cannot.

check, fit, evaluate and predict all go through `open_image`, so a broken file gets the same
reason from each of them. Files are recognised by content, whatever their extension says.
"""

from __future__ import annotations

import contextlib
import errno
import io
import math
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# MPO is the multi-picture JPEG that many cameras write; Pillow reads its first picture.
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp"})

# Why a file cannot be used: the vocabulary every command reports in.
EMPTY_FILE = "empty file (0 bytes)"
NOT_AN_IMAGE = "not an image"
TRUNCATED = "truncated image"
NO_SUCH_FILE = "no such file (moved or deleted?)"
PERMISSION_DENIED = "permission denied: this user may not read it"
_OS_REASONS = {errno.ENOENT: NO_SUCH_FILE, errno.EACCES: PERMISSION_DENIED, errno.EPERM: PERMISSION_DENIED,
               errno.EIO: "input/output error: the disk or network share failed to read it"}
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)

# The one resize from a decoded image to the model's input, shared with the model's own resize
# layer (model.build_classifier): Keras's Resizing with these arguments is this very call.
# Antialiased, so a large photo is averaged over rather than sampled at a few points.
RESIZE = {"interpolation": "bilinear", "antialias": True}

# Images above this many pixels are reduced while decoding (JPEG: libjpeg decodes at 1/2, 1/4
# or 1/8 scale) or right after it (other formats: averaging blocks of pixels), so that memory
# stays bounded: a 12,000 x 12,000 photo would otherwise hold 432 MB of pixels per image
# being decoded. 40 megapixels is more than nearly every camera and phone writes (an 8,000 x
# 5,000 photo), so only rarer, larger images are reduced, and only they can differ slightly
# from what the exported model computes on a full-resolution decode of them.
MAX_DECODE_PIXELS = 40_000_000

# How the pixels a model sees are made from a file: part of the activation cache's key, so
# activations cached from pixels made another way are never reused. Change it with the above.
PIXELS_VERSION = f"full-decode-max{MAX_DECODE_PIXELS}+resize-bilinear-antialias"


class UnreadableImage(Exception):
    """A file that is not an image tlearn can use; the message is the reason."""


def unreadable_reason(error: BaseException) -> str:
    """The reason, in tlearn's words, for an error raised while reading or decoding a file."""
    if isinstance(error, UnreadableImage):
        return str(error)
    if isinstance(error, Image.DecompressionBombError):
        return _too_large(str(error))
    if isinstance(error, UnidentifiedImageError):
        return NOT_AN_IMAGE
    if isinstance(error, OSError) and error.errno is not None:  # from the operating system
        return _OS_REASONS.get(error.errno) or (error.strerror or str(error)).lower()
    message = str(error) or type(error).__name__
    return TRUNCATED if "truncated" in message.lower() else f"cannot decode ({message})"


def _too_large(message: str) -> str:
    numbers = [int(n) for n in re.findall(r"\d+", message)]
    if len(numbers) >= 2:
        return f"too large to decode safely ({numbers[0]:,} pixels, over the limit of {numbers[1]:,})"
    return "too large to decode safely"


@contextlib.contextmanager
def open_image(source: Path | bytes) -> Iterator[Image.Image]:
    """The image in `source` (a path or the file's bytes), opened but not yet decoded.

    Raises UnreadableImage with the reason when the file is empty, not an image, of an
    unsupported format, or fails to decode inside the `with` block (truncated, too large).
    """
    try:
        empty = len(source) == 0 if isinstance(source, bytes) else Path(source).stat().st_size == 0
        if empty:
            raise UnreadableImage(EMPTY_FILE)
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            if image.format not in SUPPORTED_FORMATS:
                raise UnreadableImage(f"unsupported image format {image.format}")
            yield image
    except UnreadableImage:
        raise
    except _DECODE_ERRORS as error:
        raise UnreadableImage(unreadable_reason(error)) from None


def probe(path: Path) -> str:
    """The image format from the file's header, without decoding the pixels."""
    with open_image(path) as image:
        return image.format


def load_rgb(path: Path, size: int) -> np.ndarray:
    """The pixels the model sees for `path`: a `size` x `size` x 3 float32 RGB array (0-255).

    `decode_rgb` then `resize_for_model`: what fit, evaluate, predict and the augmentation
    preview all use, and what the exported model computes from the decoded file itself.
    """
    return resize_for_model(decode_rgb(path), size)


def load_batches(
    paths: Sequence[Path], size: int, batch_size: int
) -> Iterator[list[np.ndarray | UnreadableImage]]:
    """`load_rgb` of `paths`, batch by batch in order, with the UnreadableImage saying why in
    place of a file that cannot be used. The next batch decodes in threads while the caller
    works on this one, so at most two batches of pixels are held however many paths there are.
    """
    batches = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    if not batches:
        return
    load = partial(_load_or_reason, size=size)
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
        upcoming = pool.map(load, batches[0])
        for index in range(len(batches)):
            loaded = list(upcoming)
            if index + 1 < len(batches):
                upcoming = pool.map(load, batches[index + 1])
            yield loaded


def load_readable(paths: Sequence[Path], size: int, batch_size: int = 16) -> np.ndarray:
    """`load_rgb` of the `paths` that can be used, stacked: float32 [N, size, size, 3], N = 0
    when none can."""
    pixels = [item for batch in load_batches(list(paths), size, batch_size) for item in batch
              if not isinstance(item, UnreadableImage)]
    return np.stack(pixels).astype(np.float32) if pixels else np.zeros((0, size, size, 3), np.float32)


def _load_or_reason(path: Path, size: int) -> np.ndarray | UnreadableImage:
    try:
        return load_rgb(path, size)
    except UnreadableImage as error:
        return error


def decode_rgb(path: Path, max_pixels: int = MAX_DECODE_PIXELS) -> np.ndarray:
    """Decode `path` at full resolution to an H x W x 3 uint8 RGB array.

    Orientation from EXIF is applied; grayscale, palette, CMYK, 16-bit and alpha images
    become RGB (transparent areas on white); an animation gives its first frame. Only an
    image of more than `max_pixels` is reduced while decoding (see MAX_DECODE_PIXELS).
    """
    with open_image(path) as image:
        factor = _reduction_factor(image.size, max_pixels)
        if factor > 1 and image.format in ("JPEG", "MPO"):  # libjpeg decodes at 1/2, 1/4 or 1/8 scale
            scale = min(_power_of_two_at_least(factor), 8)
            image.draft("RGB", (image.width // scale, image.height // scale))
        with _DECODING.hold(image.width * image.height):
            factor = _reduction_factor(image.size, max_pixels)  # what libjpeg's scales left to do
            return np.asarray(to_rgb(ImageOps.exif_transpose(_reduced(image, factor) if factor > 1 else image)))


def _reduced(image: Image.Image, factor: int) -> Image.Image:
    """`image` decoded, then averaged over `factor` x `factor` blocks (keeping image.info, so
    the EXIF orientation too); the full-size pixels are freed at once."""
    reduced = _reducible(image).reduce(factor)
    image.close()
    return reduced


class _PixelBudget:
    """Lets decodes run side by side while the pixels they decode stay within `limit` in all;
    one image above it decodes alone."""

    def __init__(self, limit: int):
        self.limit, self.in_use = limit, 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: self.in_use == 0 or self.in_use + pixels <= self.limit)
            self.in_use += pixels
        try:
            yield
        finally:
            with self._changed:
                self.in_use -= pixels
                self._changed.notify_all()


# Decoding takes about 10 bytes per pixel at its peak (Pillow's image, then the array), so the
# decoding threads together decode at most that many pixels at a time (about 0.4 GB), however
# large the photos; one larger image (a PNG to be reduced) decodes alone.
_DECODING = _PixelBudget(MAX_DECODE_PIXELS)


def resize_for_model(pixels: np.ndarray, size: int) -> np.ndarray:
    """`pixels` (H x W x 3, any number type) as `size` x `size` x 3 float32, by the very
    operation the model's resize layer runs on raw pixels (model.build_classifier).

    Neither rounded nor clipped, so the exported model given these pixels or the decoded
    image itself computes the same; on pixels already `size` x `size` it is the identity.
    """
    import tensorflow as tf  # here, so that `tlearn check` never waits for TensorFlow

    # tf.image.resize is what Keras's Resizing runs on the TensorFlow backend. Called on the
    # uint8 pixels it computes the same as on their float32 copy, without making that copy;
    # Keras's ops.image.resize would round its result back to whole numbers.
    with tf.device("/CPU:0"):  # the decoding threads leave accelerators to the model
        resized = tf.image.resize(pixels, (size, size), method=RESIZE["interpolation"], antialias=RESIZE["antialias"])
    return tf.cast(resized, tf.float32).numpy()


def _reduction_factor(size: tuple[int, int], max_pixels: int) -> int:
    """The smallest whole factor that brings an image of `size` to at most `max_pixels`."""
    width, height = size
    return max(1, math.ceil(math.sqrt(width * height / max_pixels)))


def _power_of_two_at_least(number: int) -> int:
    return 1 << (number - 1).bit_length()


def _reducible(image: Image.Image) -> Image.Image:
    """`image` in a mode Image.reduce can average: palette indices, bits and 16-bit samples cannot."""
    if image.mode in ("P", "PA"):
        return image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
    if image.mode == "1":
        return image.convert("L")
    if image.mode.startswith("I;"):
        return image.convert("I")
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode as RGB: transparency on white, 16/32-bit grayscale scaled (not clipped) to 8 bits."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    if image.mode.startswith("I"):
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() or 1.0
        return Image.fromarray((array * (255.0 / peak)).astype(np.uint8)).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")  # no copy of an image already RGB
