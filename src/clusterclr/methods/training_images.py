"""The training set as a method sees it between epochs (``Method.on_epoch_start``): clean views, encoded on demand."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from clusterclr import distributed
from clusterclr.augment import ViewMaker
from clusterclr.data.loading import image_batches
from clusterclr.data.streamed import StreamedImages
from clusterclr.models.batch_norm import batch_statistics_only


@dataclass
class TrainingImages:
    """Every training image, in training-set order, and how to encode their clean views.

    ``labels`` serve diagnostics only (pair precision, pseudo-label NMI);
    no method may let them into a loss.
    """

    images: torch.Tensor | StreamedImages  # uint8 N×C×H×W on the host (or read as needed), in training-set order
    labels: torch.Tensor | None
    views: ViewMaker
    device: torch.device
    batch_size: int
    autocast_dtype: torch.dtype | None = None
    seed: int = 0  # the run's seed, for the hooks' own randomness (k-means restarts)

    def __len__(self) -> int:
        return len(self.images)

    @torch.no_grad()
    def encode(
        self, encoder: Callable[[torch.Tensor], torch.Tensor], *modules: nn.Module, batch_statistics: bool = False
    ) -> torch.Tensor:
        """``encoder`` over the clean view of every image, in order: N × D float32 on the device.

        ``modules`` (those ``encoder`` runs) are put in eval mode for the pass,
        so batch norm uses its running statistics. ``batch_statistics=True``
        normalises each chunk with its own statistics instead, so features are
        on the scale the loss sees them during training (which matters before
        the running statistics have been learnt), and leaves the running
        statistics as they were. Either way nothing about training changes.
        """
        # Each rank of a distributed run encodes its shard and all get every feature. Shards may differ
        # by a row: the same number of chunks on every rank, so SyncBatchNorm (in batch-statistics
        # mode) meets the other ranks at every chunk.
        start, end = distributed.shard(len(self.images))
        rows = torch.arange(start, end)
        if distributed.world_size() == 1:
            chunks = rows.split(self.batch_size)
        else:
            longest_shard = -(-len(self.images) // distributed.world_size())
            chunks = rows.tensor_split(-(-longest_shard // self.batch_size))
        modes = [m.training for m in modules]
        for m in modules:
            m.train(False)
        statistics = batch_statistics_only(*modules) if batch_statistics else nullcontext()
        autocast = torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)
        pin = self.device.type == "cuda"
        try:
            features = []
            # Streamed images are decoded by DataLoader workers; an unreadable one stops every rank together.
            with statistics:
                for pixels, _ in image_batches(self.images, chunks, pin=pin, collective=True):
                    x = self.views.clean(pixels.to(self.device, non_blocking=True))
                    with autocast:
                        features.append(encoder(x).float())
            return distributed.gather_shards(torch.cat(features), len(self.images))
        finally:
            for m, mode in zip(modules, modes):
                m.train(mode)
