"""One image file (or its bytes) to upright 8-bit RGB, and the fixed-size square every clean view is.

Shared by every reader of encoded images (folders, tar shards, ``assign``),
so that an image decodes to the same pixels whichever way it is read: the
in-memory path and the streamed one agree bit for bit on clean images.
A file that cannot be used gives the reason, a short sentence, instead of
pixels; the caller decides whether that is an error (``data.skip_bad``).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


def decode(source: Path | bytes) -> Image.Image | str:
    """The upright (EXIF orientation) RGB image in a file or in its bytes, or why it cannot be used."""
    try:
        if isinstance(source, bytes):
            if not source:
                return "empty file (0 bytes)"
            opened = io.BytesIO(source)
        else:
            if source.stat().st_size == 0:
                return "empty file (0 bytes)"
            opened = source.open("rb")
        with opened as f, Image.open(f) as image:
            image.load()
            return _to_rgb(ImageOps.exif_transpose(image))
    except UnidentifiedImageError:
        return "not an image Pillow can identify (corrupt, or not an image)"
    except OSError as err:  # unreadable, or truncated ("image file is truncated")
        return err.strerror or str(err) or type(err).__name__
    # A damaged file can make a decoder fail in almost any way (SyntaxError, ValueError,
    # struct.error, DecompressionBombError, ...); each means this file cannot be used.
    except Exception as err:
        return f"{type(err).__name__}: {err}"


def square(rgb: Image.Image, size: int) -> np.ndarray:
    """3×size×size uint8: the shorter side resized to ``size``, then centre-cropped."""
    width, height = rgb.size
    side = min(width, height)
    # One resample of the centered square does "shorter side to size, then center crop".
    box = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
    if (width, height) != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BICUBIC, box=box)
    return np.asarray(rgb).transpose(2, 0, 1).copy()


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any mode to 8-bit RGB; wide integer and float modes are rescaled, not clipped."""
    if image.mode.startswith("I") or image.mode == "F":
        return Image.fromarray(_rescale(np.asarray(image), image.mode)).convert("RGB")
    return image.convert("RGB")


def _rescale(values: np.ndarray, mode: str) -> np.ndarray:
    """Map single-channel 16/32-bit or float pixels onto 0..255.

    16-bit modes span 0..65535. For 32-bit integer and float images the
    range is taken as the first of 0..1 (floats only), 0..255, 0..65535 that
    holds every pixel; otherwise the image's own min..max is stretched.
    """
    values = np.nan_to_num(values.astype(np.float64))
    low, high = float(values.min()), float(values.max())
    if mode.startswith("I;16"):
        low, high = 0.0, 65535.0
    else:
        ranges = (1.0, 255.0, 65535.0) if mode == "F" else (255.0, 65535.0)
        top = next((r for r in ranges if low >= 0 and high <= r), None)
        if top is not None:
            low, high = 0.0, top
    scaled = (values - low) * (255 / (high - low)) if high > low else np.zeros_like(values)
    return np.rint(scaled).clip(0, 255).astype(np.uint8)
