"""BYOL (Grill et al., 2020): predict a momentum target network's projection of the other view."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt
from torch import nn

from clusterclr.losses.normalized_mse import normalized_mse
from clusterclr.methods.base import Batch, DataInfo, StepOutput
from clusterclr.methods.diagnostics import normalised_std
from clusterclr.methods.momentum import MomentumMethod, MomentumOptions
from clusterclr.methods.registry import register_method
from clusterclr.models.heads import BYOLPredictor, BYOLProjector


class BYOLOptions(MomentumOptions):
    projection_hidden_dim: PositiveInt = 4096
    projection_dim: PositiveInt = 256
    predictor_hidden_dim: PositiveInt = 4096
    momentum: float = Field(0.996, ge=0, le=1)
    momentum_schedule: Literal["constant", "cosine"] = "cosine"


@register_method
class BYOL(MomentumMethod):
    """BYOL: symmetric normalised MSE between online predictions and an EMA target's projections."""

    name = "byol"
    Options = BYOLOptions

    def __init__(self, backbone: nn.Module, options: BYOLOptions, data: DataInfo, gather_negatives: bool = True) -> None:
        projector = BYOLProjector(backbone.feature_dim, options.projection_hidden_dim, options.projection_dim)
        super().__init__(backbone, options, data, projector, gather_negatives)
        self.predictor = BYOLPredictor(options.projection_dim, options.predictor_hidden_dim)

    def training_step(self, batch: Batch) -> StepOutput:
        z1, z2 = (self.projector(self.backbone(view)) for view in batch.views)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        t1, t2 = (self.momentum_encoder(view) for view in batch.views)
        # The paper's symmetrised loss is the sum of both directions (each in [0, 4]).
        loss = normalized_mse(p1, t2) + normalized_mse(p2, t1)
        return StepOutput(loss, {"loss": loss.detach(), "output_std": normalised_std(z1)})
