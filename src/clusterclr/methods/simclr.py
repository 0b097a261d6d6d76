"""SimCLR (Chen et al., 2020): the two views of one image are its only positives."""

from __future__ import annotations

import torch
from pydantic import PositiveFloat, PositiveInt

from clusterclr.methods.base import Batch, DataInfo, GlobalViews, Method, MethodOptions, StepOutput, normalised_std
from clusterclr.methods.registry import register_method
from clusterclr.models.backbones import ResNet
from clusterclr.models.heads import MLPHead


class SimCLROptions(MethodOptions):
    temperature: PositiveFloat = 0.5
    projection_hidden_dim: PositiveInt = 512
    projection_dim: PositiveInt = 128


@register_method
class SimCLR(Method):
    """SimCLR: NT-Xent over 2N views; the other view of the same image is the only positive."""

    name = "simclr"
    Options = SimCLROptions

    def __init__(self, backbone: ResNet, options: SimCLROptions, data: DataInfo) -> None:
        super().__init__(backbone, options, data)
        self.projector = MLPHead(backbone.feature_dim, options.projection_hidden_dim, options.projection_dim)

    def training_step(self, batch: Batch) -> StepOutput:
        # One forward pass over all views, so batch norm sees them together as in the paper.
        z = self.projector(self.backbone(torch.cat(batch.views)))
        loss = GlobalViews.of(z, batch.indices, len(batch.views), self.gather_negatives).nt_xent(self.options.temperature)
        return StepOutput(loss, {"loss": loss.detach(), "output_std": normalised_std(z)})
