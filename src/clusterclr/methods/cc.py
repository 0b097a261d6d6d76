"""Contrastive Clustering (Li et al., AAAI 2021): instance-level and cluster-level contrast."""

from __future__ import annotations

import torch
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt
from torch import nn

from clusterclr import distributed
from clusterclr.config import MethodOptions
from clusterclr.losses.cluster_contrast import cluster_contrast
from clusterclr.methods.base import Batch, DataInfo, Method, StepOutput
from clusterclr.methods.diagnostics import clusters_used, normalised_std
from clusterclr.methods.global_views import GlobalViews
from clusterclr.methods.registry import register_method
from clusterclr.models.cluster_heads import SoftmaxClusterHead
from clusterclr.models.heads import CCInstanceProjector


class CCOptions(MethodOptions):
    instance_temperature: PositiveFloat = 0.5
    cluster_temperature: PositiveFloat = 1.0
    projection_hidden_dim: PositiveInt = 512
    projection_dim: PositiveInt = 128
    cluster_hidden_dim: PositiveInt = 512
    cluster_weight: NonNegativeFloat = 1.0


@register_method
class ContrastiveClustering(Method):
    """CC: NT-Xent on instance projections + contrast of the two views' cluster-assignment columns."""

    name = "cc"
    Options = CCOptions
    cluster_head_attribute = "cluster_head"

    def __init__(self, backbone: nn.Module, options: CCOptions, data: DataInfo, gather_negatives: bool = True) -> None:
        super().__init__(backbone, options, data, gather_negatives)
        self.projector = CCInstanceProjector(backbone.feature_dim, options.projection_hidden_dim, options.projection_dim)
        self.cluster_head = SoftmaxClusterHead(backbone.feature_dim, options.cluster_hidden_dim, data.required_clusters())

    def training_step(self, batch: Batch) -> StepOutput:
        o = self.options
        h = self.backbone(torch.cat(batch.views))
        z = self.projector(h)
        instance = GlobalViews.of(z, batch.indices, len(batch.views), self.gather_negatives).nt_xent(o.instance_temperature)
        first, second = self.cluster_head(h).chunk(2)
        # A cluster's column spans the global batch, and so does the marginal whose entropy is kept up:
        # every rank computes the same loss on every rank's assignments.
        cluster = cluster_contrast(distributed.gather(first), distributed.gather(second), o.cluster_temperature)
        loss = instance + o.cluster_weight * cluster
        return StepOutput(loss, {
            "loss": loss.detach(),
            "instance": instance.detach(),
            "cluster": cluster.detach(),
            "clusters_used": clusters_used(first),
            "output_std": normalised_std(z),
        })

    @torch.no_grad()
    def cluster_probabilities(self, features: torch.Tensor) -> torch.Tensor:
        return self.cluster_head(features)
