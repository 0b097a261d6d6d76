"""MNIST and Fashion-MNIST in their original idx files, gzipped or not.

train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
t10k-labels-idx1-ubyte, each optionally with a .gz suffix. An idx file is a
big-endian header (magic number 2051 for N×H×W uint8 images, 2049 for N uint8
labels, then one 32-bit size per dimension) followed by the raw bytes.

``root`` may be the folder holding the files, or one with them in raw/ or in
torchvision's MNIST/raw or FashionMNIST/raw. image_size is ignored.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from clusterclr.data.base import ImageDataset, RawSplits
from clusterclr.errors import UserError

_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049
_FASHION_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


def load_mnist(root: Path | None, image_size: int | None = None) -> RawSplits:
    """MNIST digits as N×1×28×28 uint8, classes "0".."9"."""
    return _load("mnist", root, "MNIST", tuple(str(d) for d in range(10)))


def load_fashion_mnist(root: Path | None, image_size: int | None = None) -> RawSplits:
    """Fashion-MNIST as N×1×28×28 uint8 with its ten clothing classes."""
    return _load("fashion-mnist", root, "FashionMNIST", _FASHION_NAMES)


def _load(dataset: str, root: Path | None, torchvision_name: str, names: tuple[str, ...]) -> RawSplits:
    if root is None:
        raise UserError(f"dataset '{dataset}' needs --data-root pointing at the folder with its idx files")
    root = Path(root)
    for directory in (root, root / "raw", root / torchvision_name / "raw"):
        if _file(directory, "train-images-idx3-ubyte"):
            break
    else:
        raise UserError(
            f"{dataset}: no train-images-idx3-ubyte[.gz] in {root} (nor in raw/ or {torchvision_name}/raw/ below it)"
        )
    return RawSplits(
        train=_split(dataset, directory, "train", names),
        test=_split(dataset, directory, "t10k", names),
    )


def _file(directory: Path, name: str) -> Path | None:
    """The plain file if there, else its .gz (torchvision keeps both)."""
    return next((p for p in (directory / name, directory / f"{name}.gz") if p.is_file()), None)


def _split(dataset: str, directory: Path, prefix: str, names: tuple[str, ...]) -> ImageDataset:
    images_path, images = _read_idx(dataset, directory, f"{prefix}-images-idx3-ubyte", _IMAGES_MAGIC)
    labels_path, labels = _read_idx(dataset, directory, f"{prefix}-labels-idx1-ubyte", _LABELS_MAGIC)
    if len(labels) != len(images):
        raise UserError(f"{dataset}: {labels_path} holds {len(labels)} labels but {images_path} holds {len(images)} images")
    if len(labels) and labels.max() >= len(names):
        raise UserError(f"{dataset}: {prefix} labels in {directory} must be 0..{len(names) - 1}, found {labels.max()}")
    return ImageDataset(
        images=torch.from_numpy(images[:, None]),
        labels=torch.from_numpy(labels.astype(np.int64)),
        class_names=names,
    )


def _read_idx(dataset: str, directory: Path, name: str, magic: int) -> tuple[Path, np.ndarray]:
    path = _file(directory, name)
    if path is None:
        raise UserError(f"{dataset}: no {name}[.gz] in {directory}")
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"{dataset}: cannot read {path}: {e}") from None
    ndim = 3 if magic == _IMAGES_MAGIC else 1
    header = 4 + 4 * ndim
    found = struct.unpack(">i", data[:4])[0] if len(data) >= 4 else None
    if found != magic:
        raise UserError(f"{dataset}: {path} is not the expected idx file (magic number {found}, expected {magic})")
    shape = struct.unpack(f">{ndim}I", data[4:header]) if len(data) >= header else None
    expected = header + int(np.prod(shape)) if shape else header
    if len(data) != expected:
        raise UserError(f"{dataset}: {path} has {len(data)} bytes, its header promises {expected} (truncated?)")
    return path, np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()
