"""The one way tlearn opens and decodes an image file, and the words for why it cannot.

check, fit, evaluate and predict all go through `open_image`, so a broken file gets the same
reason from each of them. Files are recognised by content, whatever their extension says.
"""

from __future__ import annotations

import contextlib
import errno
import io
import re
from pathlib import Path
from typing import Iterator

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
    return TRUNCATED if "truncated" in message else f"cannot decode ({message})"


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
    """Decode `path` to a `size` x `size` x 3 uint8 RGB array.

    Orientation from EXIF is applied; grayscale, palette, CMYK and alpha images become RGB
    (transparent areas on white); an animation gives its first frame. Large JPEGs are
    decoded at a reduced scale by libjpeg itself, which is several times faster than a full
    decode and loses nothing at the training size.
    """
    with open_image(path) as image:
        image.draft("RGB", (size, size))
        rgb = to_rgb(ImageOps.exif_transpose(image))
        return np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


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
    return image.convert("RGB")
