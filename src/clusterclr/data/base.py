"""Image data sets: uint8 images plus optional labels.

Images stay uint8 (N×C×H×W) until they reach the training device, so a data
set held in memory costs one byte per pixel and augmentation happens batched
on the device. A data set too large for memory holds a ``StreamedImages``
instead (``data/streamed.py``): the same shape and indexing, decoded from its
files when read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from clusterclr.errors import UserError
from clusterclr.pathtext import path_text


class LazyImages(Protocol):
    """What a data set needs of images it does not hold: a tensor's ``dtype``, ``ndim`` and ``shape``, a subset,
    the files' sources, and joining (``data/streamed.py``'s ``StreamedImages`` is the one kind)."""

    dtype: torch.dtype
    ndim: int

    @property
    def shape(self) -> torch.Size: ...

    @property
    def sources(self) -> Sequence[str]: ...

    def take(self, indices: torch.Tensor) -> LazyImages: ...

    @staticmethod
    def concat(parts: Sequence[LazyImages]) -> LazyImages: ...


@dataclass(frozen=True)
class ImageDataset:
    """A split of a data set.

    images: uint8 tensor N×C×H×W with C in {1, 3}, or ``LazyImages`` of that shape (``StreamedImages``).
    labels: int64 tensor of N class indices, or None for unlabelled data.
    class_names: one name per class when labels exist.
    sources: where each image came from (a file path for folders), if known;
    looked up row by row for a streamed set.
    """

    images: torch.Tensor | LazyImages
    labels: torch.Tensor | None = None
    class_names: tuple[str, ...] | None = None
    sources: Sequence[str] | None = None

    def __post_init__(self) -> None:
        images = self.images
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                f"images must be uint8 N×C×H×W with C in (1, 3), got {images.dtype} {tuple(images.shape)}"
            )
        n = images.shape[0]
        if self.labels is not None:
            if self.labels.dtype != torch.int64 or self.labels.shape != (n,):
                raise ValueError(f"labels must be int64 of shape ({n},), got {self.labels.dtype} {tuple(self.labels.shape)}")
            if n and self.class_names is not None and int(self.labels.max()) >= len(self.class_names):
                raise ValueError("a label is out of range of class_names")
        if self.sources is not None and len(self.sources) != n:
            raise ValueError(f"sources has {len(self.sources)} entries for {n} images")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def streamed(self) -> bool:
        """Whether the images are read from their files when needed rather than held in memory."""
        return not isinstance(self.images, torch.Tensor)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return self.images.shape[2], self.images.shape[3]

    @property
    def num_classes(self) -> int | None:
        if self.labels is None:
            return None
        if self.class_names is not None:
            return len(self.class_names)
        return int(self.labels.max()) + 1 if len(self) else 0

    def subset(self, indices: torch.Tensor) -> ImageDataset:
        indices = torch.as_tensor(indices, dtype=torch.int64)
        if self.streamed:
            images = self.images.take(indices)
            sources = images.sources
        else:
            images = self.images[indices]
            sources = None if self.sources is None else tuple(self.sources[i] for i in indices.tolist())
        return ImageDataset(
            images=images,
            labels=None if self.labels is None else self.labels[indices],
            class_names=self.class_names,
            sources=sources,
        )


@dataclass(frozen=True)
class BadFile:
    """An image file a loader could not use, and why (``row``: its row in the set being read, when streamed)."""

    path: str
    reason: str
    row: int | None = None

    def line(self) -> str:
        """``path<TAB>reason`` on one line, both written as ``path_text`` writes a path."""
        return f"{path_text(self.path)}\t{path_text(self.reason)}"


def refuse_bad_files(bad: Sequence[BadFile], skip_hint: str, prefix: str = "") -> None:
    """An error naming the first of ``bad`` (and how many more) and ``skip_hint``, how to skip them; none if none."""
    if bad:
        raise UserError(prefix + bad_files_message(bad, skip_hint))


def bad_files_message(bad: Sequence[BadFile], skip_hint: str) -> str:
    """What is wrong with the first of ``bad`` (and how many more there are), and ``skip_hint``, how to skip them."""
    more = len(bad) - 1
    return (
        f"cannot use {path_text(bad[0].path)}: {bad[0].reason}"
        + (f" (and {more} more bad file{'s' if more > 1 else ''})" if more else "")
        + f"; fix or remove it, or skip bad files with {skip_hint}"
    )


@dataclass(frozen=True)
class RawSplits:
    """What a loader finds on disk, before clusterclr decides how to use it.

    train: the (labelled, if the set has labels) training split.
    test: the official test split, or None when the set has none.
    unlabeled: extra unlabelled training images (STL-10), or None.
    bad_files: image files left out of the splits because they could not be
    read; whether that is an error is the caller's choice (``data.skip_bad``).
    """

    train: ImageDataset
    test: ImageDataset | None = None
    unlabeled: ImageDataset | None = None
    bad_files: tuple[BadFile, ...] = ()


def concat(datasets: list[ImageDataset]) -> ImageDataset:
    """Join splits for training; labels survive only if every part has them."""
    if not datasets:
        raise ValueError("nothing to concatenate")
    shapes = {d.images.shape[1:] for d in datasets}
    if len(shapes) != 1:
        raise UserError(f"cannot join splits with different image shapes: {sorted(map(tuple, shapes))}")
    labelled = all(d.labels is not None for d in datasets)
    if any(d.streamed for d in datasets):
        if not all(d.streamed for d in datasets):
            raise ValueError("cannot join streamed and in-memory splits")
        images = type(datasets[0].images).concat([d.images for d in datasets])
        return ImageDataset(images, torch.cat([d.labels for d in datasets]) if labelled else None,
                            datasets[0].class_names if labelled else None, images.sources)
    return ImageDataset(
        images=torch.cat([d.images for d in datasets]),
        labels=torch.cat([d.labels for d in datasets]) if labelled else None,
        class_names=datasets[0].class_names if labelled else None,
        sources=(
            sum((d.sources for d in datasets), ())
            if all(d.sources is not None for d in datasets)
            else None
        ),
    )
