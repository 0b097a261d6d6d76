"""CIFAR-10 and CIFAR-100, "python version" directories as published.

Each split file is a pickle (protocol 2, bytes keys) holding b'data', an
N×3072 uint8 array of channel-planar 32×32 RGB images (all red, then green,
then blue, each row-major), and a list of labels: b'labels' in CIFAR-10,
b'fine_labels' / b'coarse_labels' in CIFAR-100. Class names come from the
meta file. The row count is read from the files, never assumed.

``root`` may be the data directory itself or the folder that contains it.
image_size is ignored: the images are always 32×32.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from clusterclr.data.base import ImageDataset, RawSplits
from clusterclr.errors import UserError

_CIFAR10 = "cifar-10-batches-py"
_CIFAR100 = "cifar-100-python"


def load_cifar10(root: Path | None, image_size: int | None = None) -> RawSplits:
    """CIFAR-10: data_batch_1..5 (train), test_batch, batches.meta."""
    train_files = [f"data_batch_{i}" for i in range(1, 6)]
    directory = _directory("cifar10", root, _CIFAR10, ["batches.meta", *train_files, "test_batch"])
    names = _class_names("cifar10", directory / "batches.meta", b"label_names")
    train = [_split("cifar10", directory / name, b"labels", names) for name in train_files]
    return RawSplits(
        train=ImageDataset(
            images=torch.cat([images for images, _ in train]),
            labels=torch.cat([labels for _, labels in train]),
            class_names=names,
        ),
        test=ImageDataset(*_split("cifar10", directory / "test_batch", b"labels", names), class_names=names),
    )


def load_cifar100(root: Path | None, image_size: int | None = None) -> RawSplits:
    """CIFAR-100 with its 100 fine classes."""
    return _cifar100("cifar100", root, b"fine")


def load_cifar100_20(root: Path | None, image_size: int | None = None) -> RawSplits:
    """CIFAR-100 with its 20 coarse superclasses, as clustering benchmarks use it."""
    return _cifar100("cifar100-20", root, b"coarse")


def _cifar100(dataset: str, root: Path | None, kind: bytes) -> RawSplits:
    directory = _directory(dataset, root, _CIFAR100, ["meta", "train", "test"])
    names = _class_names(dataset, directory / "meta", kind + b"_label_names")
    train, test = (
        ImageDataset(*_split(dataset, directory / split, kind + b"_labels", names), class_names=names)
        for split in ("train", "test")
    )
    return RawSplits(train=train, test=test)


def _directory(dataset: str, root: Path | None, dirname: str, files: list[str]) -> Path:
    """The data directory (root or root/dirname), once every file is known to be there."""
    if root is None:
        raise UserError(f"dataset '{dataset}' needs --data-root pointing at the official '{dirname}' directory")
    root = Path(root)
    directory = root / dirname if (root / dirname).is_dir() else root
    for name in files:
        if not (directory / name).is_file():
            raise UserError(f"{dataset}: no {name} in {directory} (expected the official '{dirname}' directory)")
    return directory


def _unpickle(dataset: str, path: Path) -> dict:
    try:
        with path.open("rb") as f:
            content = pickle.load(f, encoding="bytes")
    # A damaged pickle can fail in almost any way (EOFError, UnpicklingError,
    # ValueError, KeyError, MemoryError, ...); all mean the file is unusable.
    except Exception as e:
        raise UserError(f"{dataset}: cannot read {path} (corrupt or truncated?): {type(e).__name__}: {e}") from None
    if not isinstance(content, dict):
        raise UserError(f"{dataset}: {path} holds a {type(content).__name__}, expected the official pickled dict")
    return content


def _class_names(dataset: str, path: Path, key: bytes) -> tuple[str, ...]:
    content = _unpickle(dataset, path)
    if key not in content:
        raise UserError(f"{dataset}: {path} has no {key!r} entry")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in content[key])


def _split(dataset: str, path: Path, key: bytes, names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images N×3×32×32 and labels of one split file."""
    content = _unpickle(dataset, path)
    for needed in (b"data", key):
        if needed not in content:
            raise UserError(f"{dataset}: {path} has no {needed!r} entry")
    data, labels = content[b"data"], np.asarray(content[key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise UserError(f"{dataset}: {path}: b'data' must be an N×3072 uint8 array, got {got}")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"{dataset}: {path}: {key!r} must hold {len(data)} integer labels, got {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
        raise UserError(
            f"{dataset}: {path}: labels must lie in 0..{len(names) - 1}, found {labels.min()}..{labels.max()}"
        )
    images = torch.from_numpy(np.ascontiguousarray(data.reshape(-1, 3, 32, 32)))
    return images, torch.from_numpy(labels.astype(np.int64))
