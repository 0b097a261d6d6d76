"""MoCo v2 (Chen et al., 2020): queries against a momentum key encoder's keys and a queue."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Literal

import torch
from pydantic import Field, PositiveFloat, PositiveInt

from clusterclr import distributed
from clusterclr.losses.contrastive import info_nce
from clusterclr.memory.queue import KeyQueue
from clusterclr.methods.base import Batch, DataInfo, Method, MethodOptions, StepOutput, normalised_std
from clusterclr.methods.registry import register_method
from clusterclr.models.backbones import ResNet
from clusterclr.models.heads import MLPHead
from clusterclr.models.momentum import MomentumEncoder, momentum_at
from clusterclr.models.split_batch import forward_in_groups
from clusterclr.positives.views import own_key


class MoCoV2Options(MethodOptions):
    temperature: PositiveFloat = 0.2
    queue_size: PositiveInt = 65536
    momentum: float = Field(0.999, ge=0, le=1)
    momentum_schedule: Literal["constant", "cosine"] = "constant"
    projection_hidden_dim: PositiveInt = 2048
    projection_dim: PositiveInt = 128
    # Both views serve as query and as key (MoCo v2+ / v3); keys of both enter the queue.
    symmetric: bool = False
    # Shuffle-BN on one device: batch norm over this many sub-batches (see models/split_batch.py).
    bn_groups: PositiveInt = 2


@register_method
class MoCoV2(Method):
    """MoCo v2: InfoNCE of each query against its momentum key (positive) and a queue of past keys."""

    name = "moco_v2"
    Options = MoCoV2Options

    def __init__(self, backbone: ResNet, options: MoCoV2Options, data: DataInfo) -> None:
        super().__init__(backbone, options, data)
        if options.queue_size >= data.num_images:
            warnings.warn(
                f"method.queue_size={options.queue_size} is not below the {data.num_images} training images: the queue "
                f"will hold older keys of a query's own image as negatives; consider method.queue_size={data.num_images // 4}",
                stacklevel=2,
            )
        self.projector = MLPHead(backbone.feature_dim, options.projection_hidden_dim, options.projection_dim, hidden_bn=False)
        self.key_encoder = MomentumEncoder(self.backbone, self.projector)
        self.queue = KeyQueue(options.queue_size, options.projection_dim)
        self._new_keys: torch.Tensor | None = None

    def _query(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))

    def training_step(self, batch: Batch) -> StepOutput:
        loss, queries, _ = self._contrast_with_queue(batch.views)
        return StepOutput(loss, {"loss": loss.detach(), "output_std": normalised_std(queries[-1])})

    def _contrast_with_queue(
        self, views: list[torch.Tensor], positives: Callable[[int, int, torch.device, int], torch.Tensor] = own_key
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """InfoNCE of queries against [the batch's keys; the queue], for one (query, key) view pair or both.

        ``positives(queries, candidates, device, first)`` marks each query's positive candidates
        (MoCo: its own key, the batch's key ``first`` + i). Returns the mean loss, each pair's
        queries and every rank's keys; those keys are enqueued after the optimiser step, so this
        batch's keys are positives now and negatives only later.
        """
        o = self.options
        first, second = views
        pairs = [(first, second), (second, first)] if o.symmetric else [(first, second)]
        losses, queries, keys = [], [], []
        for query_view, key_view in pairs:
            q = forward_in_groups(self._query, query_view, o.bn_groups, shuffle=False)
            k = forward_in_groups(self.key_encoder, key_view, o.bn_groups, shuffle=True)
            batch_keys, all_keys, own = self._batch_keys(k)
            candidates = torch.cat([batch_keys, self.queue.keys()])
            losses.append(info_nce(q, candidates, positives(len(q), len(candidates), q.device, own), o.temperature))
            queries.append(q)
            keys.append(all_keys)
        self._new_keys = torch.cat(keys)
        return torch.stack(losses).mean(), queries, keys

    def _batch_keys(self, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """This rank's keys ``k`` -> the batch's keys to contrast with, every rank's keys, and where ``k`` starts in the first.

        Every rank's keys go to the queue either way, so all ranks keep the same queue.
        """
        all_keys = distributed.gather(k)
        if self.gather_negatives:
            return all_keys, all_keys, distributed.rank() * len(k)
        return k, all_keys, 0

    def after_optimizer_step(self, progress: float) -> None:
        momentum = momentum_at(self.options.momentum, progress, self.options.momentum_schedule)
        self.key_encoder.update(self.backbone, self.projector, momentum=momentum)
        if self._new_keys is not None:
            self.queue.enqueue(self._new_keys)
            self._new_keys = None
