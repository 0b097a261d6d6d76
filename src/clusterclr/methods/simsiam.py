"""SimSiam (Chen & He, 2021): predict one view's projection from the other's, no negatives."""

from __future__ import annotations

from pydantic import PositiveInt

from clusterclr.losses.negative_cosine import negative_cosine
from clusterclr.methods.base import Batch, DataInfo, Method, MethodOptions, StepOutput, normalised_std
from clusterclr.methods.registry import register_method
from clusterclr.models.backbones import ResNet
from clusterclr.models.heads import MLPHead


class SimSiamOptions(MethodOptions):
    projection_hidden_dim: PositiveInt = 2048
    projection_dim: PositiveInt = 2048
    predictor_hidden_dim: PositiveInt = 512


@register_method
class SimSiam(Method):
    """SimSiam: symmetric negative cosine between predictor outputs and stop-gradient projections."""

    name = "simsiam"
    Options = SimSiamOptions

    def __init__(self, backbone: ResNet, options: SimSiamOptions, data: DataInfo) -> None:
        super().__init__(backbone, options, data)
        self.projector = MLPHead(
            backbone.feature_dim, options.projection_hidden_dim, options.projection_dim, num_layers=3, last_bn=True
        )
        self.predictor = MLPHead(options.projection_dim, options.predictor_hidden_dim, options.projection_dim)

    def training_step(self, batch: Batch) -> StepOutput:
        # One forward per view, as in the paper: batch norm sees each view's batch on its own.
        z1, z2 = (self.projector(self.backbone(view)) for view in batch.views)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = (negative_cosine(p1, z2) + negative_cosine(p2, z1)) / 2
        return StepOutput(loss, {"loss": loss.detach(), "output_std": normalised_std(z1)})
