"""The data sets clusterclr can read, by the name users give on the command line."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clusterclr.data import cifar, digits, folder, mnist, npz, stl10
from clusterclr.data.base import RawSplits, refuse_bad_files
from clusterclr.errors import UserError
from clusterclr.pathtext import path_text


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str  # one line, shown to users
    load: Callable[[Path | None, int | None], RawSplits]
    needs_root: bool


_IDX = "a folder of idx files, plain or .gz (torchvision's layout too)"
_CIFAR100 = "the official 'cifar-100-python' directory"

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("digits", "scikit-learn's bundled 8×8 digits (1,797 images, 10 classes)", digits.load, False),
        DatasetSpec("cifar10", "CIFAR-10, the official 'cifar-10-batches-py' directory", cifar.load_cifar10, True),
        DatasetSpec("cifar100", f"CIFAR-100 (100 fine classes), {_CIFAR100}", cifar.load_cifar100, True),
        DatasetSpec("cifar100-20", f"CIFAR-100 (20 coarse superclasses), {_CIFAR100}", cifar.load_cifar100_20, True),
        DatasetSpec("stl10", "STL-10, the official 'stl10_binary' directory", stl10.load, True),
        DatasetSpec("mnist", f"MNIST, {_IDX}", mnist.load_mnist, True),
        DatasetSpec("fashion-mnist", f"Fashion-MNIST, {_IDX}", mnist.load_fashion_mnist, True),
        DatasetSpec("folder", "a folder of images: flat (unlabelled) or one subfolder per class", folder.load, True),
        DatasetSpec("npz", "a .npz file: uint8 'x', optional 'y', 'x_test', 'y_test', 'class_names'", npz.load, True),
    )
}


def load_raw(
    name: str,
    root: str | Path | None,
    image_size: int | None = None,
    skip_bad: bool = False,
    skip_hint: str = "--set data.skip_bad=true",
) -> RawSplits:
    """Read data set ``name`` from ``root`` (ignored by sets that need none).

    An image file that cannot be used is an error naming it (and ``skip_hint``,
    the caller's way to skip), unless ``skip_bad``: then it is left out and
    listed in ``bad_files``.
    """
    spec = DATASETS.get(name)
    if spec is None:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    path = None if root is None else Path(root).expanduser()
    if spec.needs_root:
        if path is None:
            raise UserError(f"dataset {name!r} needs --data-root pointing at {spec.description}")
        if not path.exists():
            raise UserError(f"dataset {name!r}: --data-root {path_text(path)} does not exist")
    raw = spec.load(path, image_size)
    if not skip_bad:
        refuse_bad_files(raw.bad_files, skip_hint, f"{name}: ")
    return raw
