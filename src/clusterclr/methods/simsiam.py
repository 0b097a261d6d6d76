"""SimSiam (Chen & He, 2021): predict one view's projection from the other's, no negatives."""

from __future__ import annotations

from pydantic import PositiveInt
from torch import nn

from clusterclr.config import MethodOptions
from clusterclr.losses.negative_cosine import negative_cosine
from clusterclr.methods.base import Batch, DataInfo, Method, StepOutput
from clusterclr.methods.diagnostics import normalised_std
from clusterclr.methods.registry import register_method
from clusterclr.models.heads import SimSiamPredictor, SimSiamProjector
from clusterclr.optim import ParameterGroup


class SimSiamOptions(MethodOptions):
    projection_hidden_dim: PositiveInt = 2048
    projection_dim: PositiveInt = 2048
    predictor_hidden_dim: PositiveInt = 512
    # Keep the predictor at the peak learning rate throughout (the paper's fix_pred_lr, which it found better).
    fix_pred_lr: bool = False


@register_method
class SimSiam(Method):
    """SimSiam: symmetric negative cosine between predictor outputs and stop-gradient projections."""

    name = "simsiam"
    Options = SimSiamOptions

    def __init__(self, backbone: nn.Module, options: SimSiamOptions, data: DataInfo, gather_negatives: bool = True) -> None:
        super().__init__(backbone, options, data, gather_negatives)
        self.projector = SimSiamProjector(backbone.feature_dim, options.projection_hidden_dim, options.projection_dim)
        self.predictor = SimSiamPredictor(options.projection_dim, options.predictor_hidden_dim)

    def parameter_groups(self) -> list[ParameterGroup]:
        return [ParameterGroup("predictor", tuple(self.predictor.parameters()), fixed_lr=True)] if self.options.fix_pred_lr else []

    def training_step(self, batch: Batch) -> StepOutput:
        # One forward per view, as in the paper: batch norm sees each view's batch on its own.
        z1, z2 = (self.projector(self.backbone(view)) for view in batch.views)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = (negative_cosine(p1, z2) + negative_cosine(p2, z1)) / 2
        return StepOutput(loss, {"loss": loss.detach(), "output_std": normalised_std(z1)})
