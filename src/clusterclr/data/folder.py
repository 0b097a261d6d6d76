"""A folder of image files, in one of two layouts.

- Class tree: root/<class>/... image files (searched recursively inside each
  class folder); labelled, class names are the sorted folder names.
- Flat: image files directly in root; unlabelled.

Having both image files in root and class folders is ambiguous and refused.
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

import torch

from clusterclr.data.base import ImageDataset, RawSplits
from clusterclr.data.decode import EXTENSIONS
from clusterclr.data.index import FolderIndex, cached_index, image_files, list_layout  # noqa: F401 (image_files: for ``assign``)
from clusterclr.data.streamed import FileStore, StreamedImages, decode_all
from clusterclr.errors import UserError

DEFAULT_IMAGE_SIZE = 64


def open_streamed(root: Path | None, image_size: int | None = None) -> RawSplits:
    """Every image file under root, indexed but not read (see the module docstring for the layouts)."""
    index = folder_index(root)
    size = _size(image_size)
    images = StreamedImages(FileStore(index.root, index.files), size)
    labels = None if index.labels is None else torch.from_numpy(index.labels)
    return RawSplits(train=ImageDataset(images, labels, index.class_names, images.sources))


def load(root: Path | None, image_size: int | None = None) -> RawSplits:
    """Read every image under root into memory."""
    raw = open_streamed(root, image_size)
    train, bad = decode_all(raw.train)
    if train is None:
        raise UserError(
            f"folder: none of the {len(raw.train)} image files in {root} could be read; e.g. {bad[0].path}: {bad[0].reason}"
        )
    return RawSplits(train=train, bad_files=bad)


def folder_index(root: Path | None) -> FolderIndex:
    if root is None:
        raise UserError("dataset 'folder' needs --data-root pointing at a folder of images (or of class folders)")
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"folder: {root} is not a directory")
    return cached_index(root, _layout)


def image_paths(root: Path) -> list[Path]:
    """The image files ``load`` reads from ``root``, in its order (errors as ``load``'s for a bad layout)."""
    index = folder_index(root)
    return [index.path(i) for i in range(len(index.files))]


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
            f"folder: {root} has image files both directly inside it and in subfolders "
            f"(e.g. {', '.join(list(classes)[:3])}); use only class folders (labelled) or only files (unlabelled)"
        )
    if not direct and not classes:
        raise UserError(f"folder: no image files ({' '.join(sorted(EXTENSIONS))}) in {root} or its subfolders")
    return direct, classes
