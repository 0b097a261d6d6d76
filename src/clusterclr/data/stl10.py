"""STL-10, the official binary directory ``stl10_binary``.

train_X.bin / test_X.bin / unlabeled_X.bin: raw uint8 images, 3×96×96 each,
every channel stored column-major (so read as N×3×96×96, then swap the last
two axes). train_y.bin / test_y.bin: one uint8 label per image, 1..10.
class_names.txt: one name per line. unlabeled_X.bin may be left out.

``root`` may be the directory itself or the folder that contains it.
image_size is ignored: the images are always 96×96.

``open_streamed`` maps the files instead of reading them (``ArrayStore``): an
image is read from the page cache when it is used, so the 3 GB of
unlabeled images never sit in the training process's own memory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clusterclr.data.base import ImageDataset, RawSplits
from clusterclr.data.streamed import StreamedImages
from clusterclr.errors import UserError

_DIRNAME = "stl10_binary"
_IMAGE_BYTES = 3 * 96 * 96


def load(root: Path | None, image_size: int | None = None) -> RawSplits:
    """Return train, test and (when present) unlabeled splits as N×3×96×96 uint8."""
    return _splits(root, _images)


def open_streamed(root: Path | None, image_size: int | None = None) -> RawSplits:
    """The same splits with their images memory-mapped, read one by one as they are used."""
    return _splits(root, lambda path: StreamedImages(ArrayStore(path), 96))


class ArrayStore:
    """The images of one ``*_X.bin`` file, memory-mapped (again in each process that reads it)."""

    def __init__(self, path: Path) -> None:
        self.path, self.count = path, _count(path)
        self._array: np.memmap | None = None

    def __len__(self) -> int:
        return self.count

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}

    def image(self, row: int) -> Image.Image:
        if self._array is None:
            self._array = np.memmap(self.path, dtype=np.uint8, mode="r", shape=(self.count, 3, 96, 96))
        return Image.fromarray(np.ascontiguousarray(self._array[row].transpose(2, 1, 0)))  # channel, column, row -> H×W×C

    def source(self, row: int) -> str:
        return f"{self.path}[{row}]"


def _splits(root: Path | None, images: Callable[[Path], torch.Tensor | StreamedImages]) -> RawSplits:
    if root is None:
        raise UserError(f"dataset 'stl10' needs --data-root pointing at the official '{_DIRNAME}' directory")
    root = Path(root)
    directory = root / _DIRNAME if (root / _DIRNAME).is_dir() else root
    for name in ("class_names.txt", "train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"):
        if not (directory / name).is_file():
            raise UserError(f"stl10: no {name} in {directory} (expected the official '{_DIRNAME}' directory)")
    lines = (directory / "class_names.txt").read_text().splitlines()
    names = tuple(line.strip() for line in lines if line.strip())
    unlabeled = directory / "unlabeled_X.bin"
    return RawSplits(
        train=_labelled(directory, "train", names, images),
        test=_labelled(directory, "test", names, images),
        unlabeled=ImageDataset(images=images(unlabeled)) if unlabeled.is_file() else None,
    )


def _labelled(directory: Path, split: str, names: tuple[str, ...], read: Callable) -> ImageDataset:
    images = read(directory / f"{split}_X.bin")
    y_path = directory / f"{split}_y.bin"
    labels = np.fromfile(y_path, dtype=np.uint8).astype(np.int64) - 1
    if len(labels) != len(images):
        raise UserError(f"stl10: {y_path} has {len(labels)} labels for {len(images)} images in {split}_X.bin")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
        found = f"{labels.min() + 1}..{labels.max() + 1}"
        raise UserError(f"stl10: {y_path}: labels must lie in 1..{len(names)}, found {found}")
    return ImageDataset(images=images, labels=torch.from_numpy(labels), class_names=names)


def _count(path: Path) -> int:
    size = path.stat().st_size
    if size == 0 or size % _IMAGE_BYTES:
        raise UserError(f"stl10: {path} holds {size} bytes, not a whole number of 3×96×96 images (truncated?)")
    return size // _IMAGE_BYTES


def _images(path: Path) -> torch.Tensor:
    # Memory-mapped so the (multi-GB) unlabeled split is copied once, not twice.
    raw = np.memmap(path, dtype=np.uint8, mode="r", shape=(_count(path), 3, 96, 96))
    return torch.from_numpy(np.ascontiguousarray(raw.transpose(0, 1, 3, 2)))
