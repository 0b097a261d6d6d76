"""PCL, Prototypical Contrastive Learning (Li et al., ICLR 2021): MoCo v2's InfoNCE plus ProtoNCE.

The queries of MoCo v2 are also contrasted with k-means prototypes of the
whole training set, at one or more granularities, each prototype with its
own temperature, the concentration of its cluster (``losses/proto_nce.py``).
After ``warmup_epochs`` of InfoNCE alone, every epoch starts by encoding
every clean training image with the momentum encoder and clustering the
features afresh (``clustering/prototypes.py``). Loss: InfoNCE +
``proto_weight``·ProtoNCE term, the weight rising linearly to full over
``proto_ramp_epochs`` after the warm-up (ours, for short schedules: the
first prototypes are fitted to young features; 0 is the paper's switch).

It shares InterCLR's clustering parts (faiss k-means, the pseudo-label
diagnostics) but keeps no memory bank: it clusters a fresh pass over the
data each epoch, so per-image features would be 656 MB at ImageNet scale
held for nothing; only the labels, prototypes and φ are kept, as buffers.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import torch
from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
)
from torch import nn

from clusterclr import distributed
from clusterclr.clustering.diagnostics import pseudo_label_report
from clusterclr.clustering.prototypes import Prototypes
from clusterclr.errors import UserError
from clusterclr.losses.proto_nce import proto_nce
from clusterclr.methods.base import Batch, DataInfo, StepOutput
from clusterclr.methods.diagnostics import normalised_std
from clusterclr.methods.moco_v2 import MoCoV2, MoCoV2Options
from clusterclr.methods.ramp import EpochRamp
from clusterclr.methods.registry import register_method
from clusterclr.methods.training_images import TrainingImages


class PCLOptions(MoCoV2Options):
    renamed: ClassVar[dict[str, str]] = {"num_clusters": "granularities"}
    # Clusters per granularity; default: one clustering into K (``clusters``). The paper:
    # 25,000, 50,000 and 100,000 on ImageNet.
    granularities: list[Annotated[int, Field(ge=2)]] | None = Field(None, min_length=1)
    warmup_epochs: NonNegativeInt = 20  # InfoNCE alone before the first clustering
    proto_weight: NonNegativeFloat = 1.0
    proto_ramp_epochs: NonNegativeInt = 0  # epochs over which proto_weight rises to full after the warm-up
    # r: prototypes in each denominator besides the batch's own; default all of them.
    prototype_negatives: PositiveInt | None = None
    concentration_alpha: PositiveFloat = 10.0
    concentration_floor: float = Field(0.0, ge=0, le=1)  # φ ≥ floor × mean φ; 0 is the paper (losses/proto_nce.py)
    kmeans_iterations: PositiveInt = 20
    kmeans_restarts: PositiveInt = 3

    @field_validator("granularities")
    @classmethod
    def _distinct(cls, granularities: list[int] | None) -> list[int] | None:
        if granularities is not None and len(set(granularities)) < len(granularities):
            raise ValueError(f"granularities must differ, got {granularities}")
        return granularities


@register_method
class PCL(MoCoV2):
    """PCL: MoCo v2's InfoNCE plus ProtoNCE against k-means prototypes with per-cluster concentration."""

    name = "pcl"
    Options = PCLOptions
    # The on/off switch of earlier versions is the ramp's fraction now (True: 1).
    legacy_state_prefixes: ClassVar[dict[str, str]] = {**MoCoV2.legacy_state_prefixes, "proto_active": "proto_ramp.fraction"}

    def __init__(self, backbone: nn.Module, options: PCLOptions, data: DataInfo, gather_negatives: bool = True) -> None:
        super().__init__(backbone, options, data, gather_negatives)
        granularities = options.granularities or [data.required_clusters()]
        for k in granularities:
            if k > data.num_images:
                raise UserError(f"method.granularities: {k} clusters exceed the {data.num_images} training images")
        self.prototypes = nn.ModuleList(Prototypes(data.num_images, options.projection_dim, k) for k in granularities)
        self.proto_ramp = EpochRamp(options.warmup_epochs, options.proto_ramp_epochs)

    def on_epoch_start(self, epoch: int, images: TrainingImages) -> dict[str, Any]:
        o = self.options
        fraction = self.proto_ramp.set_epoch(epoch)
        if fraction == 0:
            return {}
        # Batch statistics only before any training: then the running statistics describe nothing yet.
        features = images.encode(self.momentum_encoder, self.momentum_encoder, batch_statistics=epoch == 0)
        logs: dict[str, Any] = {}
        for i, prototypes in enumerate(self.prototypes):
            seed = (images.seed * 1_000_003 + epoch * len(self.prototypes) + i) % 2**31
            inertia = prototypes.fit(
                features, o.temperature, seed, o.kmeans_iterations, o.kmeans_restarts, o.concentration_alpha, o.concentration_floor
            )
            report = pseudo_label_report(prototypes.labels, prototypes.num_clusters, images.labels)
            report.update(
                inertia=inertia,
                concentration_min=float(prototypes.concentration.min()),
                concentration_max=float(prototypes.concentration.max()),
            )
            logs.update({f"k{prototypes.num_clusters}_{key}": value for key, value in report.items()})
        return {"proto_fraction": fraction, **logs}

    def training_step(self, batch: Batch) -> StepOutput:
        o = self.options
        contrast = self.contrast_with_queue(batch)
        info_nce_loss, queries = contrast.loss, contrast.queries
        global_indices = distributed.gather(batch.indices)  # the batch's own prototypes are the global batch's
        prototype = [
            proto_nce(
                q,
                [p.centroids for p in self.prototypes],
                [p.labels[batch.indices] for p in self.prototypes],
                [p.concentration for p in self.prototypes],
                [self._included(p, global_indices) for p in self.prototypes],
            )
            for q in queries
        ] if self.proto_ramp.value > 0 else []
        logs = {"info_nce": info_nce_loss.detach(), "output_std": normalised_std(queries[-1])}
        loss = info_nce_loss
        if prototype:
            proto_loss = torch.stack(prototype).mean()
            loss = loss + self.proto_ramp.value * o.proto_weight * proto_loss
            logs["proto_nce"] = proto_loss.detach()
        return StepOutput(loss, {"loss": loss.detach(), **logs})

    def _included(self, prototypes: Prototypes, indices: torch.Tensor) -> torch.Tensor | None:
        """The prototypes in the denominator: the (global) batch's own plus ``prototype_negatives`` drawn from the rest."""
        r = self.options.prototype_negatives
        if r is None or r >= prototypes.num_clusters:
            return None
        own = torch.zeros(prototypes.num_clusters, dtype=torch.bool, device=indices.device)
        own[prototypes.labels[indices]] = True
        # Random keys pick r of the others uniformly; the batch's own rank below all of them.
        keys = torch.rand(prototypes.num_clusters, device=indices.device).masked_fill(own, -1.0)
        included = own.clone()
        included[keys.topk(r).indices] = True
        return included
