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

``open_streamed`` indexes the files (``data/index.py``) and reads none:
training and evaluation then decode them as they go. ``load`` decodes every
file into memory. A file that cannot be used (empty, unreadable, corrupt or
truncated, too large to decode safely, an image mode Pillow cannot convert)
is left out by ``load`` and reported in ``RawSplits.bad_files`` with the
reason; ``load_raw`` turns that into an error naming the file unless
``data.skip_bad`` is set. A streamed folder meets such files as it reads them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clusterclr.data.base import ImageDataset, RawSplits
from clusterclr.data.decode import EXTENSIONS
from clusterclr.data.index import FolderIndex, cached_index, image_files, list_layout  # noqa: F401 (image_files: for ``assign``)
from clusterclr.data.streamed import FileStore, StreamedImages, decode_all
from clusterclr.errors import UserError
from clusterclr.pathtext import path_text

DEFAULT_IMAGE_SIZE = 64


def open_streamed(root: Path | None, image_size: int | None = None) -> RawSplits:
    """Every image file under root, indexed but not read (see the module docstring for the layouts)."""
    index = folder_index(root)
    size = _size(image_size)
    images = StreamedImages(FileStore(index.root, index.files), size)
    labels = None if index.labels is None else torch.from_numpy(index.labels)
    names = None if index.class_names is None else tuple(map(path_text, index.class_names))
    return RawSplits(train=ImageDataset(images, labels, names, images.sources))


def load(root: Path | None, image_size: int | None = None) -> RawSplits:
    """Read every image under root into memory."""
    raw = open_streamed(root, image_size)
    train, bad = decode_all(raw.train)
    if train is None:
        raise UserError(
            f"none of the {len(raw.train)} image files in {path_text(root)} could be read; e.g. {path_text(bad[0].path)}: {bad[0].reason}"
        )
    return RawSplits(train=train, bad_files=bad)


def folder_index(root: Path | None) -> FolderIndex:
    if root is None:
        raise UserError("dataset 'folder' needs --data-root pointing at a folder of images (or of class folders)")
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"folder: {path_text(root)} is not a directory")
    return cached_index(root, _layout)


def image_paths(root: Path) -> list[Path]:
    """The image files ``load`` reads from ``root``, in its order (errors as ``load``'s for a bad layout)."""
    index = folder_index(root)
    return [index.path(i) for i in range(len(index.files))]


def typical_side(paths: list[Path]) -> int | None:
    """The median shorter side of the images at ``paths`` (a sample of a folder), from the files' headers alone; None if none opens."""
    sides = []
    for path in paths:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
        except Exception:  # a bad file is reported when it is read; here it only does not count
            continue
    return int(np.median(sides)) if sides else None


def _size(image_size: int | None) -> int:
    size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
    if size < 1:
        raise UserError(f"folder: image size must be positive, got {size}")
    return size


def _layout(root: Path, times: dict[str, int]) -> tuple[list[str], dict[str, list[str]]]:
    """(image files directly in root, {class folder name: its image files}); exactly one is non-empty."""
    direct, classes = list_layout(root, times)
    if direct and classes:
        raise UserError(
            f"folder: {path_text(root)} has image files both directly inside it and in subfolders "
            f"(e.g. {', '.join(list(classes)[:3])}); use only class folders (labelled) or only files (unlabelled)"
        )
    if not direct and not classes:
        raise UserError(f"folder: no image files ({' '.join(sorted(EXTENSIONS))}) in {path_text(root)} or its subfolders")
    return direct, classes
