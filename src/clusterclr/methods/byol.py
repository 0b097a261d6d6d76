"""BYOL (Grill et al., 2020): predict a momentum target network's projection of the other view."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from clusterclr.losses.normalized_mse import normalized_mse
from clusterclr.methods.base import Batch, DataInfo, Method, MethodOptions, StepOutput, normalised_std
from clusterclr.methods.registry import register_method
from clusterclr.models.backbones import ResNet
from clusterclr.models.heads import MLPHead
from clusterclr.models.momentum import MomentumEncoder, momentum_at


class BYOLOptions(MethodOptions):
    projection_hidden_dim: PositiveInt = 4096
    projection_dim: PositiveInt = 256
    predictor_hidden_dim: PositiveInt = 4096
    momentum: float = Field(0.996, ge=0, le=1)
    momentum_schedule: Literal["constant", "cosine"] = "cosine"


@register_method
class BYOL(Method):
    """BYOL: symmetric normalised MSE between online predictions and an EMA target's projections."""

    name = "byol"
    Options = BYOLOptions

    def __init__(self, backbone: ResNet, options: BYOLOptions, data: DataInfo) -> None:
        super().__init__(backbone, options, data)
        self.projector = MLPHead(backbone.feature_dim, options.projection_hidden_dim, options.projection_dim)
        self.predictor = MLPHead(options.projection_dim, options.predictor_hidden_dim, options.projection_dim)
        self.target = MomentumEncoder(self.backbone, self.projector)

    def training_step(self, batch: Batch) -> StepOutput:
        z1, z2 = (self.projector(self.backbone(view)) for view in batch.views)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        t1, t2 = (self.target(view) for view in batch.views)
        # The paper's symmetrised loss is the sum of both directions (each in [0, 4]).
        loss = normalized_mse(p1, t2) + normalized_mse(p2, t1)
        return StepOutput(loss, {"loss": loss.detach(), "output_std": normalised_std(z1)})

    def after_optimizer_step(self, progress: float) -> None:
        momentum = momentum_at(self.options.momentum, progress, self.options.momentum_schedule)
        self.target.update(self.backbone, self.projector, momentum=momentum)
