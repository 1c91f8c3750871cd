"""Reading image files by their content, whatever their extension says."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# MPO is the multi-picture JPEG that many cameras write; Pillow reads its first picture.
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp"})
_READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class UnreadableImage(Exception):
    """A file that is not an image tlearn can use; the message is the reason."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def probe(path: Path) -> str:
    """Return the image format from the file's header, without decoding the pixels."""
    if path.stat().st_size == 0:
        raise UnreadableImage("empty file (0 bytes)")
    try:
        with Image.open(path) as image:
            image_format = image.format
    except Image.DecompressionBombError as error:
        raise UnreadableImage(f"too large to decode safely ({error})") from None
    except _READ_ERRORS:
        raise UnreadableImage("not an image") from None
    if image_format not in SUPPORTED_FORMATS:
        raise UnreadableImage(f"unsupported image format {image_format}")
    return image_format


def load_rgb(path: Path, size: int) -> np.ndarray:
    """Decode `path` to a `size` x `size` x 3 uint8 RGB array.

    Orientation from EXIF is applied; grayscale, palette, CMYK and alpha images become RGB
    (transparent areas on white); an animation gives its first frame. Large JPEGs are
    decoded at a reduced scale by libjpeg itself, which is several times faster than a full
    decode and loses nothing at the training size.
    """
    try:
        with Image.open(path) as image:
            if image.format not in SUPPORTED_FORMATS:
                raise UnreadableImage(f"unsupported image format {image.format}")
            image.draft("RGB", (size, size))
            image = ImageOps.exif_transpose(image)
            rgb = _to_rgb(image)
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except Image.DecompressionBombError as error:
        raise UnreadableImage(f"too large to decode safely ({error})") from None
    except UnidentifiedImageError:
        raise UnreadableImage("not an image") from None
    except _READ_ERRORS as error:
        raise UnreadableImage(str(error) or type(error).__name__) from None


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    if image.mode.startswith("I"):  # 16/32-bit grayscale: scale to 8 bits rather than clip
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() or 1.0
        return Image.fromarray((array * (255.0 / peak)).astype(np.uint8)).convert("RGB")
    return image.convert("RGB")
