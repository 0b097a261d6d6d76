"""From what is on disk to the three splits a run uses."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clusterclr.config import DataConfig
from clusterclr.data.base import BadFile, ImageDataset, concat
from clusterclr.data.registry import load_raw
from clusterclr.errors import UserError
from clusterclr.pathtext import path_text


@dataclass(frozen=True)
class DataSplits:
    """train: what self-supervised training sees (labels unused).
    bank: labelled reference set for kNN and for fitting k-means.
    test: queries for kNN and the split every metric is reported on.
    eval_split: where ``test`` comes from: "test" (the official split),
    "holdout" (labelled data without a test split: a part of train held out
    and removed from ``train`` and ``bank``), or "train" (unlabelled data
    without a test split: nothing can be scored, so nothing is held back).
    skipped: files left out because they could not be read (``data.skip_bad``).
    read: the training split as read, in file order, before any of it is held
    out (``clusterclr cluster`` groups every image of a folder).
    """

    name: str
    train: ImageDataset
    bank: ImageDataset
    test: ImageDataset
    eval_split: str
    skipped: tuple[BadFile, ...] = ()
    read: ImageDataset | None = None

    @property
    def labelled(self) -> bool:
        return self.bank.labels is not None and self.test.labels is not None

    @property
    def num_classes(self) -> int | None:
        return self.bank.num_classes if self.labelled else None


def holdout_indices(dataset: ImageDataset, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held out) row indices; stratified by class when labels exist."""
    generator = torch.Generator().manual_seed(seed)
    groups = [torch.arange(len(dataset))] if dataset.labels is None else [
        torch.nonzero(dataset.labels == c).flatten() for c in torch.unique(dataset.labels)
    ]
    kept, held = [], []
    for rows in groups:
        rows = rows[torch.randperm(len(rows), generator=generator)]
        n_held = round(fraction * len(rows))
        held.append(rows[:n_held])
        kept.append(rows[n_held:])
    return torch.cat(kept).sort().values, torch.cat(held).sort().values


def resize(dataset: ImageDataset, size: int, chunk: int = 1024) -> ImageDataset:
    """Bilinear (antialiased) resize to size × size, in chunks so only one chunk is ever float.

    A streamed data set is decoded at ``size`` instead (its files are read at their own resolution)."""
    if dataset.image_size == (size, size):
        return dataset
    if dataset.streamed:
        return ImageDataset(dataset.images.resized(size), dataset.labels, dataset.class_names, dataset.sources)
    images = torch.empty((len(dataset), dataset.channels, size, size), dtype=torch.uint8)
    for start in range(0, len(dataset), chunk):
        part = dataset.images[start : start + chunk].float()
        part = F.interpolate(part, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        images[start : start + chunk] = part.round_().clamp_(0, 255).to(torch.uint8)
    return ImageDataset(images, dataset.labels, dataset.class_names, dataset.sources)


# ITU-R BT.601 luminance weights of R, G, B.
LUMINANCE = (0.299, 0.587, 0.114)


def with_channels(dataset: ImageDataset, channels: int) -> tuple[ImageDataset, str | None]:
    """``dataset`` with ``channels`` channels (grey repeated into RGB, RGB to BT.601 luminance), and the conversion in words."""
    if dataset.channels == channels:
        return dataset, None
    if (dataset.channels, channels) == (1, 3):
        images, done = dataset.images.expand(-1, 3, -1, -1).contiguous(), "1 -> 3 channels (grey repeated)"
    elif (dataset.channels, channels) == (3, 1):
        weights = torch.tensor(LUMINANCE).view(1, 3, 1, 1)
        images = (dataset.images.float() * weights).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
        done = "3 -> 1 channel (BT.601 luminance)"
    else:
        raise UserError(f"cannot convert {dataset.channels}-channel images to {channels} channels")
    return ImageDataset(images, dataset.labels, dataset.class_names, dataset.sources), done


def load_splits(cfg: DataConfig) -> DataSplits:
    raw = load_raw(cfg.dataset, cfg.root, cfg.image_size, cfg.skip_bad, cfg.stream, cfg.memory_limit, cfg.workers)
    if raw.bad_files:
        first = raw.bad_files[0]
        warnings.warn(
            f"{cfg.dataset}: skipped {len(raw.bad_files)} bad file(s) (data.skip_bad=true), "
            f"e.g. {path_text(first.path)}: {first.reason}",
            stacklevel=2,
        )
    labelled_train = raw.train
    if raw.test is not None:
        test, eval_split = raw.test, "test"
    elif raw.train.labels is None:
        test, eval_split = raw.train, "train"
    else:
        kept, held = holdout_indices(raw.train, cfg.holdout_fraction, cfg.split_seed)
        if len(held):
            labelled_train, test, eval_split = raw.train.subset(kept), raw.train.subset(held), "holdout"
        else:  # too few images per class to hold any out (tiny class folders): nothing to score, as without labels
            test, eval_split = ImageDataset(raw.train.images, sources=raw.train.sources), "train"
    train = labelled_train if raw.unlabeled is None else concat([labelled_train, raw.unlabeled])
    splits = [train, labelled_train, test, raw.train]
    # Converted once per distinct split: without a holdout, train, bank and read are one data set.
    if cfg.channels is not None:
        converted = {id(d): with_channels(d, cfg.channels)[0] for d in splits}
        splits = [converted[id(d)] for d in splits]
    if cfg.image_size is not None:
        resized = {id(d): resize(d, cfg.image_size) for d in splits}
        splits = [resized[id(d)] for d in splits]
    train, bank, test, read = splits
    return DataSplits(cfg.dataset, train, bank, test, eval_split=eval_split, skipped=raw.bad_files, read=read)
