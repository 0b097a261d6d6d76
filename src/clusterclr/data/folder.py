"""A folder of image files, in one of two layouts.

- Class tree: root/<class>/... image files (searched recursively inside each
  class folder); labelled, class names are the sorted folder names (as
  text: ``path_text`` escapes what a name cannot show, such as non-UTF-8 bytes).
- Flat: image files directly in root; unlabelled.

Having both image files in root and class folders is ambiguous and refused.
Sources are the files' paths exactly as the file system gives them (any
bytes; see ``clusterclr.pathtext`` for how they are written out).
Every image is turned upright (EXIF orientation) and made RGB uint8; its
shorter side is resized to image_size (default 64), then it is center-cropped
to image_size×image_size. Order is by sorted path.

A file that cannot be used (empty, unreadable, corrupt or truncated, too
large to decode safely, an image mode Pillow cannot convert) is left out and
reported in ``RawSplits.bad_files`` with the reason; ``load_raw`` turns that
into an error naming the file unless ``data.skip_bad`` is set.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from clusterclr.data.base import BadFile, ImageDataset, RawSplits
from clusterclr.errors import UserError
from clusterclr.pathtext import path_text

EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
DEFAULT_IMAGE_SIZE = 64


def load(root: Path | None, image_size: int | None = None) -> RawSplits:
    """Read every image under root (see the module docstring for the layouts)."""
    if root is None:
        raise UserError("dataset 'folder' needs --data-root pointing at a folder of images (or of class folders)")
    root = Path(root)
    size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
    if size < 1:
        raise UserError(f"folder: image size must be positive, got {size}")
    if not root.is_dir():
        raise UserError(f"folder: {path_text(root)} is not a directory")
    direct, classes = _layout(root)
    paths = direct or [p for files in classes.values() for p in files]
    labels = [i for i, files in enumerate(classes.values()) for _ in files]  # empty when flat
    read = read_files(paths, size, f"in {path_text(root)}")
    return RawSplits(
        train=ImageDataset(
            images=read.images,
            labels=None if direct else torch.tensor([labels[i] for i in read.kept], dtype=torch.int64),
            class_names=None if direct else tuple(map(path_text, classes)),
            sources=tuple(str(paths[i]) for i in read.kept),
        ),
        bad_files=read.bad,
    )


@dataclass(frozen=True)
class ReadFiles:
    """Image files decoded: the usable ones' pixels and positions, and the others with why."""

    images: torch.Tensor  # uint8 N×3×size×size, the usable files in the order given
    kept: list[int]  # their positions among the files given
    bad: tuple[BadFile, ...]


def read_files(paths: Sequence[Path], size: int, where: str, progress: bool = False) -> ReadFiles:
    """Decode ``paths`` (in threads) at ``size``; an error naming ``where`` they are when none is usable."""
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        results = pool.map(lambda p: try_read(p, size), paths)
        pixels = list(tqdm(results, total=len(paths), desc="reading", unit="image") if progress else results)
    bad = tuple(BadFile(str(path), result) for path, result in zip(paths, pixels) if isinstance(result, str))
    kept = [i for i, result in enumerate(pixels) if not isinstance(result, str)]
    if not kept:
        raise UserError(
            f"none of the {len(paths)} image files {where} could be read; e.g. {path_text(bad[0].path)}: {bad[0].reason}"
        )
    return ReadFiles(torch.from_numpy(np.stack([pixels[i] for i in kept])), kept, bad)


def image_paths(root: Path) -> list[Path]:
    """The image files ``load`` reads from ``root``, in its order (errors as ``load``'s for a bad layout)."""
    direct, classes = _layout(root)
    return direct or [p for files in classes.values() for p in files]


def typical_side(paths: list[Path], sample: int = 200) -> int | None:
    """The median shorter side of (an evenly spaced sample of) ``paths``, from the files' headers alone; None if none opens."""
    step = max(1, len(paths) // sample)
    sides = []
    for path in paths[::step][:sample]:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
        except Exception:  # a bad file is reported when it is read; here it only does not count
            continue
    return int(np.median(sides)) if sides else None


def _layout(root: Path) -> tuple[list[Path], dict[str, list[Path]]]:
    """(image files directly in root, {class folder name: its image files}); exactly one is non-empty."""
    direct = image_files(root, recursive=False)
    classes = {d.name: files for d in sorted(_subdirs(root)) if (files := image_files(d, recursive=True))}
    if direct and classes:
        raise UserError(
            f"folder: {path_text(root)} has image files both directly inside it and in subfolders "
            f"(e.g. {', '.join(map(path_text, list(classes)[:3]))}); use only class folders (labelled) or only files (unlabelled)"
        )
    if not direct and not classes:
        raise UserError(f"folder: no image files ({' '.join(sorted(EXTENSIONS))}) in {path_text(root)} or its subfolders")
    return direct, classes


def _subdirs(directory: Path) -> list[Path]:
    # Hidden folders (.git, .ipynb_checkpoints, ...) are never classes.
    return [d for d in directory.iterdir() if d.is_dir() and not d.name.startswith(".")]


def image_files(directory: Path, recursive: bool) -> list[Path]:
    """The image files in ``directory`` (and below it with ``recursive``), sorted; hidden files left out."""
    candidates = directory.rglob("*") if recursive else directory.iterdir()
    return sorted(
        p for p in candidates
        if p.suffix.lower() in EXTENSIONS and p.is_file() and not p.name.startswith(".")
    )


def try_read(path: Path, size: int) -> np.ndarray | str:
    """3×size×size uint8 pixels of one file, or why it cannot be used."""
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        with path.open("rb") as f, Image.open(f) as image:
            image.load()
            rgb = _to_rgb(ImageOps.exif_transpose(image))
    except UnidentifiedImageError:
        return "not an image Pillow can identify (corrupt, or not an image)"
    except OSError as err:  # unreadable, or truncated ("image file is truncated")
        return err.strerror or str(err) or type(err).__name__
    # A damaged file can make a decoder fail in almost any way (SyntaxError, ValueError,
    # struct.error, DecompressionBombError, ...); each means this file cannot be used.
    except Exception as err:
        return f"{type(err).__name__}: {err}"
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
