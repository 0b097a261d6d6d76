"""Images and labels in a NumPy ``.npz`` archive; ``root`` is the file itself.

Arrays (other names are ignored):
- x: uint8 images, N×H×W (grayscale) or N×H×W×C with C in 1, 3 or 4
  (a 4th, alpha, channel is dropped with a warning).
- y: optional integer labels 0..K-1, shape (N,).
- x_test, y_test: an optional test split in the same form.
- class_names: optional strings, one per class; "0".."K-1" when absent.

Loaded with allow_pickle=False, so object arrays are refused. image_size is ignored.
"""

from __future__ import annotations

import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from clusterclr.data.base import ImageDataset, RawSplits
from clusterclr.errors import UserError

_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def load(root: Path | None, image_size: int | None = None) -> RawSplits:
    """Return the train split from x/y and, if x_test is present, the test split."""
    if root is None:
        raise UserError("dataset 'npz' needs --data-root pointing at a .npz file with an 'x' array")
    path = Path(root)
    arrays = _read(path)
    if "x" not in arrays:
        raise UserError(f"npz: {path} has no 'x' array (found: {', '.join(arrays) or 'none'})")
    if "y_test" in arrays and "x_test" not in arrays:
        raise UserError(f"npz: {path} has 'y_test' but no 'x_test'")

    train = _split(path, arrays, "x", "y")
    test = _split(path, arrays, "x_test", "y_test") if "x_test" in arrays else None
    if test is not None and test[0].shape[1:] != train[0].shape[1:]:
        raise UserError(
            f"npz: {path}: 'x_test' images are {tuple(test[0].shape[1:])} (C×H×W) "
            f"but 'x' images are {tuple(train[0].shape[1:])}"
        )
    names = _class_names(path, arrays, [labels for _, labels in filter(None, (train, test)) if labels is not None])
    return RawSplits(train=_dataset(*train, names), test=None if test is None else _dataset(*test, names))


def _dataset(images: torch.Tensor, labels: np.ndarray | None, names: tuple[str, ...] | None) -> ImageDataset:
    if labels is None:
        return ImageDataset(images=images)
    return ImageDataset(images=images, labels=torch.from_numpy(labels), class_names=names)


def _split(path: Path, arrays: dict[str, np.ndarray], x: str, y: str) -> tuple[torch.Tensor, np.ndarray | None]:
    images = _images(path, arrays, x)
    return images, _labels(path, arrays, y, len(images)) if y in arrays else None


def _read(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise UserError(f"npz: {path} is not a file (expected a .npz archive)")
    # Opened here, not by np.load, which leaks its file handle when the zip is corrupt.
    with path.open("rb") as f:
        try:
            archive = np.load(f, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise UserError(f"npz: {path} holds a single array, expected an .npz archive with an 'x' array")
            return {name: archive[name] for name in archive.files}
        except _READ_ERRORS as e:
            raise UserError(f"npz: cannot read {path}: {e}") from None


def _images(path: Path, arrays: dict[str, np.ndarray], key: str) -> torch.Tensor:
    """N×C×H×W uint8 from N×H×W or N×H×W×C."""
    x = arrays[key]
    if x.dtype != np.uint8:
        raise UserError(f"npz: {path}: '{key}' must be uint8 (0..255), got {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[3] in (1, 3, 4):
        if x.shape[3] == 4:
            warnings.warn(f"npz: {path}: '{key}' has 4 channels; dropping the 4th (alpha)", stacklevel=3)
            x = x[..., :3]
        x = x.transpose(0, 3, 1, 2)
    else:
        raise UserError(f"npz: {path}: '{key}' must be N×H×W or N×H×W×C with C in 1, 3, 4, got shape {x.shape}")
    if len(x) == 0:
        raise UserError(f"npz: {path}: '{key}' holds no images")
    return torch.from_numpy(np.ascontiguousarray(x))


def _labels(path: Path, arrays: dict[str, np.ndarray], key: str, n: int) -> np.ndarray:
    y = arrays[key]
    if not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"npz: {path}: '{key}' must hold integer labels, got {y.dtype}")
    if y.shape != (n,):
        raise UserError(f"npz: {path}: '{key}' must have shape ({n},) to match its images, got {y.shape}")
    if y.min() < 0:
        raise UserError(f"npz: {path}: '{key}' has negative labels (min {y.min()}); labels must be 0..K-1")
    return y.astype(np.int64)


def _class_names(path: Path, arrays: dict[str, np.ndarray], labels: list[np.ndarray]) -> tuple[str, ...] | None:
    if not labels:
        return None
    top = max(int(y.max()) for y in labels)
    if "class_names" not in arrays:
        # Shared names keep the class count equal across splits even if one lacks the top class.
        return tuple(str(i) for i in range(top + 1))
    names = arrays["class_names"]
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise UserError(f"npz: {path}: 'class_names' must be a 1-D array of strings, got {names.dtype} {names.shape}")
    if top >= len(names):
        raise UserError(f"npz: {path}: label {top} is out of range of the {len(names)} 'class_names'")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist())
