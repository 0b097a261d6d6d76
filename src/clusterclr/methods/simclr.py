"""SimCLR (Chen et al., 2020): the two views of one image are its only positives."""

from __future__ import annotations

import torch
from pydantic import PositiveFloat, PositiveInt
from torch import nn

from clusterclr.config import MethodOptions
from clusterclr.methods.base import Batch, DataInfo, Method, StepOutput
from clusterclr.methods.diagnostics import normalised_std
from clusterclr.methods.global_views import GlobalViews
from clusterclr.methods.registry import register_method
from clusterclr.models.heads import SimCLRProjector
from clusterclr.positives.views import Positives, same_image


class SimCLROptions(MethodOptions):
    temperature: PositiveFloat = 0.5
    projection_hidden_dim: PositiveInt = 512
    projection_dim: PositiveInt = 128


@register_method
class SimCLR(Method):
    """SimCLR: NT-Xent over 2N views; the other view of the same image is the only positive."""

    name = "simclr"
    Options = SimCLROptions

    def __init__(self, backbone: nn.Module, options: SimCLROptions, data: DataInfo, gather_negatives: bool = True) -> None:
        super().__init__(backbone, options, data, gather_negatives)
        self.projector = SimCLRProjector(backbone.feature_dim, options.projection_hidden_dim, options.projection_dim)

    def training_step(self, batch: Batch) -> StepOutput:
        # One forward pass over all views, so batch norm sees them together as in the paper.
        z = self.projector(self.backbone(torch.cat(batch.views)))
        views = GlobalViews.of(z, batch.indices, len(batch.views), self.gather_negatives)
        positives = self.positive_pairs(views)
        loss = views.nt_xent(self.options.temperature, positives.mask)
        return StepOutput(loss, {"loss": loss.detach(), "output_std": normalised_std(z), **positives.logs})

    def positive_pairs(self, views: GlobalViews) -> Positives:
        """Which views of the global batch are positives of each other (V·G × V·G): here, the views of one image.

        The hook a method overrides to widen the positives (``sepp_simclr``).
        """
        return Positives(same_image(len(views.indices), views.num_views, device=views.embeddings.device))
