"""InterCLR (Xie et al., IJCV 2022, arXiv 2008.11702): MoCo v2 plus inter-image contrast through online clustering.

The intra-image branch is MoCo v2 as it is. The inter-image branch takes
the same queries to a memory bank holding one momentum-encoder feature and
one pseudo-label per training image (``memory/bank.py``): the positive is
the bank feature of a cluster mate, the negatives semi-hard bank features
of other clusters (``positives/cluster_mates.py``), and the loss is
InfoNCE with a margin on the positive logit (``losses/inter_image.py``).
Total: ``intra_weight``·intra + ``inter_weight``·inter (0.75 and 0.25).

Before the first epoch the bank is filled with the momentum encoder's
features of every clean training image and clustered by k-means. After
each optimiser step the batch's keys overwrite their images' rows and are
relabelled to the nearest centroid; every ``refresh_every`` steps the
centroids are recomputed, small clusters dissolved and empty ones refilled.

Three additions of ours, for short schedules (the paper trains 200 epochs
on ImageNet): the inter-image term waits ``warmup_epochs`` (the bank still
follows the keys) and then ramps in over ``inter_ramp_epochs``; and every
``recluster_every`` epochs from the end of the warm-up, k-means re-fits the
bank's clusters to its current features. Without re-fitting, the clusters
fitted to the untrained encoder only drift by online updates: on the
CIFAR-10 subset a cluster mate shared the query's class 14–18% of the time
over 40 epochs (10% by chance).
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar, Literal

import torch
from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    model_validator,
)
from torch import nn

from clusterclr import distributed
from clusterclr.clustering.diagnostics import pseudo_label_report
from clusterclr.errors import UserError
from clusterclr.losses.inter_image import margin_info_nce
from clusterclr.memory.bank import MemoryBank
from clusterclr.methods.base import Batch, DataInfo, StepOutput
from clusterclr.methods.diagnostics import normalised_std
from clusterclr.methods.moco_v2 import MoCoV2, MoCoV2Options
from clusterclr.methods.ramp import EpochRamp
from clusterclr.methods.registry import register_method
from clusterclr.methods.training_images import TrainingImages
from clusterclr.positives.cluster_mates import cluster_mates, semi_hard_negatives


class InterCLROptions(MoCoV2Options):
    renamed: ClassVar[dict[str, str]] = {"num_clusters": "pseudo_label_clusters"}
    # The bank's online clustering; default: K (``clusters``); the paper: 10,000 on ImageNet.
    pseudo_label_clusters: int | None = Field(None, ge=2)
    refresh_every: PositiveInt = 10  # steps between centroid refreshes
    min_cluster_size: NonNegativeInt = 20  # smaller clusters are dissolved at a refresh
    intra_weight: NonNegativeFloat = 0.75
    inter_weight: NonNegativeFloat = 0.25
    inter_temperature: PositiveFloat = 0.2
    margin: float = -0.5  # the positive logit is (cos − margin)/τ: negative loosens
    negatives: PositiveInt = 16384  # per query
    negative_pool: PositiveInt = 128000  # the most similar bank entries they are drawn from
    bank_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    init_kmeans_restarts: PositiveInt = 3  # of every k-means of the bank, the first and the re-fits
    warmup_epochs: NonNegativeInt = 0  # epochs of MoCo alone (the bank still follows the keys)
    inter_ramp_epochs: NonNegativeInt = 0  # epochs over which inter_weight rises to full after the warm-up
    # Re-fit the bank's clusters by k-means every N epochs from the end of the warm-up; 0: never (the paper).
    recluster_every: NonNegativeInt = 5

    @model_validator(mode="after")
    def _consistent(self) -> InterCLROptions:
        if self.negatives > self.negative_pool:
            raise ValueError(f"negatives={self.negatives} cannot be drawn from a negative_pool of {self.negative_pool}")
        if self.intra_weight == self.inter_weight == 0:
            raise ValueError("intra_weight and inter_weight are both 0: nothing to train")
        return self


@register_method
class InterCLR(MoCoV2):
    """InterCLR: MoCo v2 plus margin InfoNCE against cluster mates and semi-hard negatives of an online-clustered bank."""

    name = "interclr"
    Options = InterCLROptions
    # The on/off switch of earlier versions is the ramp's fraction now (True: 1).
    legacy_state_prefixes: ClassVar[dict[str, str]] = {**MoCoV2.legacy_state_prefixes, "inter_active": "inter_ramp.fraction"}

    def __init__(self, backbone: nn.Module, options: InterCLROptions, data: DataInfo, gather_negatives: bool = True) -> None:
        super().__init__(backbone, options, data, gather_negatives)
        if options.negative_pool >= data.num_images:
            warnings.warn(
                f"method.negative_pool={options.negative_pool} is not below the {data.num_images} training images: "
                f"negatives are drawn from the whole bank, not the semi-hard ones; consider "
                f"method.negative_pool={max(data.num_images // 5, 1)}",
                stacklevel=2,
            )
        clusters = options.pseudo_label_clusters or data.required_clusters()
        if clusters > data.num_images:
            raise UserError(f"method.pseudo_label_clusters={clusters} exceeds the {data.num_images} training images")
        self.bank = MemoryBank(
            data.num_images,
            options.projection_dim,
            clusters,
            options.refresh_every,
            options.min_cluster_size,
            getattr(torch, options.bank_dtype),
        )
        self._bank_update: tuple[torch.Tensor, torch.Tensor] | None = None
        self.inter_ramp = EpochRamp(options.warmup_epochs, options.inter_ramp_epochs)
        self._true_labels: torch.Tensor | None = None  # diagnostics only

    def reclusters_at(self, epoch: int) -> bool:
        """Whether the bank is re-fitted by k-means before ``epoch`` (never before the first: it is fitted then)."""
        every, start = self.options.recluster_every, self.options.warmup_epochs
        return every > 0 and epoch > 0 and epoch >= start and (epoch - start) % every == 0

    def on_epoch_start(self, epoch: int, images: TrainingImages) -> dict[str, Any]:
        o = self.options
        logs: dict[str, Any] = {}
        if epoch == 0:
            # Batch statistics: the untrained encoder's running statistics describe nothing yet.
            features = images.encode(self.momentum_encoder, self.momentum_encoder, batch_statistics=True)
            self.bank.initialise(features, seed=images.seed, restarts=o.init_kmeans_restarts)
        elif self.reclusters_at(epoch):
            seed = (images.seed * 1_000_003 + epoch) % 2**31
            logs["refit_inertia"] = self.bank.refit(seed, o.init_kmeans_restarts)
        logs["inter_fraction"] = self.inter_ramp.set_epoch(epoch)
        self._true_labels = None if images.labels is None else images.labels.to(self.bank.labels.device)
        return {**logs, **pseudo_label_report(self.bank.labels, self.bank.num_clusters, images.labels)}

    def training_step(self, batch: Batch) -> StepOutput:
        o = self.options
        contrast = self.contrast_with_queue(batch)
        intra_loss, queries, keys = contrast.loss, contrast.queries, contrast.keys
        logs: dict[str, torch.Tensor] = {}
        fraction = self.inter_ramp.value
        inter = [self._inter_image_loss(q, batch.indices, logs) for q in queries] if fraction > 0 else []
        # Like the queue, the bank takes this batch's keys only after the optimiser step (one key per image),
        # every rank's, so that all ranks keep the same bank.
        self._bank_update = (distributed.gather(batch.indices), keys[0])
        logs.update(intra=intra_loss.detach(), output_std=normalised_std(queries[-1]))
        if inter:
            inter_loss = torch.stack(inter).mean()
            loss = o.intra_weight * intra_loss + fraction * o.inter_weight * inter_loss
            logs["inter"] = inter_loss.detach()
        else:
            loss = intra_loss
        return StepOutput(loss, {"loss": loss.detach(), **logs})

    def _inter_image_loss(self, q: torch.Tensor, indices: torch.Tensor, logs: dict[str, torch.Tensor]) -> torch.Tensor:
        o, bank = self.options, self.bank
        positives = cluster_mates(bank.labels, indices, bank.num_clusters)
        with torch.no_grad():
            similarities = q.detach().to(bank.features.dtype) @ bank.features.T
        negatives, valid = semi_hard_negatives(similarities, bank.labels, bank.labels[indices], o.negative_pool, o.negatives)
        if self._true_labels is not None:
            logs["positive_precision"] = (self._true_labels[positives] == self._true_labels[indices]).float().mean()
        return margin_info_nce(
            q, bank.features[positives], bank.features[negatives], o.margin, o.inter_temperature, valid
        )

    def after_optimizer_step(self, progress: float) -> None:
        super().after_optimizer_step(progress)
        if self._bank_update is not None:
            self.bank.write(*self._bank_update)
            self._bank_update = None
