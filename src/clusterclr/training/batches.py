"""Where a training step's images come from: the training data behind one interface, in memory or streamed.

``batches(order, epoch, start_step)`` yields, for each step of an epoch
from ``start_step`` on, this rank's ``HostBatch``: its slice of the global
batch (``distributed.local_part`` of the epoch's order, so every image is
seen once per epoch whatever the number of processes), as uint8 on the host.
``HostBatch.to_device`` then makes the method's views on the device.

- ``InMemoryBatches``: rows of the decoded tensor; every view is made on the
  device, crop included (``ViewMaker``), as it always was.
- ``StreamedBatches``: DataLoader workers decode each image and cut its
  random resized crops from the full-resolution picture
  (``data/crops.py``: draws fixed by (seed, epoch, image, view), so a
  resumed run needs no worker state), into pinned memory, a few batches
  ahead; the rest of each view (flip, colour, grayscale, blur, normalise)
  is made on the device (``ViewMaker.finish``). An unreadable file is
  replaced by the next readable image and reported to the data set's
  ``BadFiles`` when its batch is taken: skipped and listed with
  ``data.skip_bad``, otherwise a ``BadImageError`` on every rank at the
  same step, so the loop can checkpoint there and stop.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from clusterclr import distributed
from clusterclr.augment import ViewMaker
from clusterclr.data.base import BadFile
from clusterclr.data.crops import crop_generator, random_resized_crop
from clusterclr.data.decode import square
from clusterclr.data.loading import loader
from clusterclr.data.streamed import StreamedImages
from clusterclr.methods.base import Batch


@dataclass
class HostBatch:
    """One rank's images of a step, on the host, before any view is made."""

    indices: torch.Tensor  # the images' rows in the training set
    images: torch.Tensor | None = None  # uint8 N×C×H×W whole images: views cropped on the device
    crops: torch.Tensor | None = None  # uint8 V×N×C×S×S crops made by the loader
    clean: torch.Tensor | None = None  # uint8 N×C×S×S clean images (streamed, for methods that ask)

    def to_device(
        self, views: ViewMaker, device: torch.device, num_views: int, needs_clean: bool
    ) -> Batch:
        """The method's ``Batch``: ``num_views`` augmented views (and the clean view if asked) on ``device``."""
        if self.images is not None:
            images = self.images.to(device, non_blocking=True)
            made = views(images, num_views)
            clean = views.clean(images) if needs_clean else None
        else:
            made = [views.finish(crop) for crop in self.crops.to(device, non_blocking=True)]
            clean = views.clean(self.clean.to(device, non_blocking=True)) if needs_clean else None
        return Batch(made, self.indices.to(device), clean)


def _steps(order: torch.Tensor, batch_size: int, start_step: int) -> Iterator[torch.Tensor]:
    """This rank's training-set rows for each step of the epoch from ``start_step`` (an incomplete last batch is dropped)."""
    for step in range(start_step, len(order) // batch_size):
        yield distributed.local_part(order[step * batch_size : (step + 1) * batch_size])


class InMemoryBatches:
    """Training batches from a decoded uint8 tensor."""

    def __init__(self, images: torch.Tensor, batch_size: int) -> None:
        self.images, self.batch_size = images, batch_size

    def batches(self, order: torch.Tensor, epoch: int, start_step: int = 0) -> Iterator[HostBatch]:
        for indices in _steps(order, self.batch_size, start_step):
            yield HostBatch(indices, images=self.images[indices])


class _CropRows:
    """What a worker makes of a batch's rows: each image's crops (and clean view), and the files it passed over."""

    def __init__(
        self, images: StreamedImages, num_views: int, clean: bool, scale: tuple[float, float], ratio: tuple[float, float], seed: int
    ) -> None:
        self.images, self.num_views, self.clean, self.scale, self.ratio, self.seed = images, num_views, clean, scale, ratio, seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitems__(self, keys: list[tuple[int, int]]):
        n, size = len(keys), self.images.size
        crops = np.empty((self.num_views, n, 3, size, size), dtype=np.uint8)
        clean = np.empty((n, 3, size, size), dtype=np.uint8) if self.clean else None
        bad: list[BadFile] = []
        for k, (epoch, index) in enumerate(keys):
            _, image, met = self.images.readable(index)
            bad += met
            for view in range(self.num_views):
                rng = crop_generator(self.seed, epoch, index, view)
                crops[view, k] = random_resized_crop(image, size, self.scale, self.ratio, rng)
            if clean is not None:
                clean[k] = square(image, size)
        indices = torch.tensor([index for _, index in keys], dtype=torch.int64)
        return indices, torch.from_numpy(crops), None if clean is None else torch.from_numpy(clean), bad


class _EpochSteps:
    """The batch sampler of a streamed loader: (epoch, row) keys of this rank's share of each step, set per epoch."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.order, self.epoch, self.start = torch.zeros(0, dtype=torch.int64), 0, 0

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for rows in _steps(self.order, self.batch_size, self.start):
            yield [(self.epoch, row) for row in rows.tolist()]

    def __len__(self) -> int:
        return max(0, len(self.order) // self.batch_size - self.start)


class StreamedBatches:
    """Training batches decoded and cropped by DataLoader workers from a ``StreamedImages``."""

    def __init__(
        self, images: StreamedImages, batch_size: int, num_views: int, clean: bool,
        crop_scale: tuple[float, float], crop_ratio: tuple[float, float], seed: int, pin: bool,
    ) -> None:
        self.images = images
        self.steps = _EpochSteps(batch_size)
        rows = _CropRows(images, num_views, clean, tuple(crop_scale), tuple(crop_ratio), seed)
        self.loader = loader(rows, self.steps, images.workers, pin, persistent=True)

    def batches(self, order: torch.Tensor, epoch: int, start_step: int = 0) -> Iterator[HostBatch]:
        self.steps.order, self.steps.epoch, self.steps.start = order, epoch, start_step
        for indices, crops, clean, bad in self.loader:
            self.images.bad_files.meet(bad, collective=True)
            yield HostBatch(indices, crops=crops, clean=clean)
