"""MoCo v2 (Chen et al., 2020): queries against a momentum key encoder's keys and a queue."""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from pydantic import PositiveFloat, PositiveInt
from torch import nn

from clusterclr import distributed
from clusterclr.losses.contrastive import info_nce
from clusterclr.memory.queue import KeyQueue
from clusterclr.methods.base import Batch, DataInfo, StepOutput
from clusterclr.methods.diagnostics import normalised_std
from clusterclr.methods.momentum import MomentumMethod, MomentumOptions
from clusterclr.methods.registry import register_method
from clusterclr.models.heads import MoCoV2Projector
from clusterclr.models.split_batch import forward_in_groups
from clusterclr.positives.views import Positives, own_key


class MoCoV2Options(MomentumOptions):
    temperature: PositiveFloat = 0.2
    queue_size: PositiveInt = 65536
    projection_hidden_dim: PositiveInt = 2048
    projection_dim: PositiveInt = 128
    # Both views serve as query and as key (MoCo v2+ / v3); keys of both enter the queue.
    symmetric: bool = False
    # Shuffle-BN on one device: batch norm over this many sub-batches (see models/split_batch.py).
    bn_groups: PositiveInt = 2


class QueueContrast(NamedTuple):
    """MoCo's part of a step: the mean InfoNCE, each view pair's queries, each pair's keys of every rank, and the positives' logs."""

    loss: torch.Tensor
    queries: list[torch.Tensor]
    keys: list[torch.Tensor]
    logs: dict[str, torch.Tensor]


@register_method
class MoCoV2(MomentumMethod):
    """MoCo v2: InfoNCE of each query against its momentum key (positive) and a queue of past keys."""

    name = "moco_v2"
    Options = MoCoV2Options

    def __init__(self, backbone: nn.Module, options: MoCoV2Options, data: DataInfo, gather_negatives: bool = True) -> None:
        projector = MoCoV2Projector(backbone.feature_dim, options.projection_hidden_dim, options.projection_dim)
        super().__init__(backbone, options, data, projector, gather_negatives)
        if options.queue_size >= data.num_images:
            warnings.warn(
                f"method.queue_size={options.queue_size} is not below the {data.num_images} training images: the queue "
                f"will hold older keys of a query's own image as negatives; consider method.queue_size={data.num_images // 4}",
                stacklevel=2,
            )
        self.queue = KeyQueue(options.queue_size, options.projection_dim)
        self._new_keys: torch.Tensor | None = None

    def query(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))

    def training_step(self, batch: Batch) -> StepOutput:
        contrast = self.contrast_with_queue(batch)
        logs = {"loss": contrast.loss.detach(), "output_std": normalised_std(contrast.queries[-1]), **contrast.logs}
        return StepOutput(contrast.loss, logs)

    def contrast_with_queue(self, batch: Batch) -> QueueContrast:
        """InfoNCE of queries against [the batch's keys; the queue], for one (query, key) view pair or both.

        The positives come from ``positive_keys``. Every rank's keys are
        enqueued after the optimiser step, so this batch's keys are
        positives now and negatives only later.
        """
        o = self.options
        first, second = batch.views
        pairs = [(first, second), (second, first)] if o.symmetric else [(first, second)]
        losses, queries, keys = [], [], []
        positives: Positives | None = None
        for query_view, key_view in pairs:
            q = forward_in_groups(self.query, query_view, o.bn_groups, shuffle=False)
            k = forward_in_groups(self.momentum_encoder, key_view, o.bn_groups, shuffle=True)
            batch_keys, all_keys, own = self._batch_keys(k)
            candidates = torch.cat([batch_keys, self.queue.keys()])
            if positives is None:  # the same for both view pairs
                positives = self.positive_keys(batch, len(candidates), own)
            losses.append(info_nce(q, candidates, positives.mask, o.temperature))
            queries.append(q)
            keys.append(all_keys)
        self._new_keys = torch.cat(keys)
        return QueueContrast(torch.stack(losses).mean(), queries, keys, positives.logs)

    def positive_keys(self, batch: Batch, num_candidates: int, own: int) -> Positives:
        """Which of the ``num_candidates`` [batch keys; queue] are positives of each query: here, its own key, ``own`` + i.

        The hook a method overrides to widen the positives (``sepp_moco_v2``).
        """
        return Positives(own_key(len(batch.indices), num_candidates, device=batch.indices.device, first=own))

    def _batch_keys(self, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """This rank's keys ``k`` -> the batch's keys to contrast with, every rank's keys, and where ``k`` starts in the first.

        Every rank's keys go to the queue either way, so all ranks keep the same queue.
        """
        all_keys = distributed.gather(k)
        if self.gather_negatives:
            return all_keys, all_keys, distributed.rank() * len(k)
        return k, all_keys, 0

    def after_optimizer_step(self, progress: float) -> None:
        super().after_optimizer_step(progress)
        if self._new_keys is not None:
            self.queue.enqueue(self._new_keys)
            self._new_keys = None
