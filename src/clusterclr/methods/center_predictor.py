"""Joint clustering with a cluster-centre predictor (Sundareswaran et al., 2021, arXiv 2109.12714).

SimCLR's instance loss on two augmented views, plus DEC-style learnable
cluster centres on the backbone features h: a clustering loss KL(P‖Q) that
sharpens the clean view's assignments, and an anchor loss that pulls each
augmented view's assignment towards the clean view's.

``balance_weight`` (λ, 0 in the paper) adds CC's guard against empty
clusters, λ·(log K − H(P)), with P the clean views' cluster marginal over
the global batch: the anchor loss alone lets clusters empty (see
BENCHMARKS.md).

The paper sets the centres by k-means on the untrained backbone's features.
``cluster_warmup_epochs`` delays that (and the two cluster losses) until the
instance loss has shaped the features: centres fitted to random features
are left behind as the backbone learns, and most of them end up empty.

``clean_view_norm`` says how batch norm treats the clean view, which the
paper passes through the backbone on its own in training mode
(``separate``): normalised by the clean batch's statistics, which also
enter the running statistics, so evaluation (running statistics, about
half from augmented batches) sees features on another scale than the
centres were fitted to (8% of head assignments differed at
initialisation). ``running`` normalises the clean view as evaluation does
and leaves the running statistics to the augmented views; ``batch`` uses
the clean batch's statistics without keeping them; ``joint`` passes the
clean view in one forward with the augmented ones, one set of statistics
for all three.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Literal

import torch
from pydantic import (
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    model_validator,
)
from torch import nn

from clusterclr import distributed
from clusterclr.clustering.kmeans import kmeans
from clusterclr.config import MethodOptions
from clusterclr.losses.cluster_contrast import marginal_entropy_gap
from clusterclr.losses.dec import anchor_loss, clustering_loss
from clusterclr.methods.base import Batch, DataInfo, Method, StepOutput
from clusterclr.methods.diagnostics import clusters_used, normalised_std
from clusterclr.methods.global_views import GlobalViews
from clusterclr.methods.registry import register_method
from clusterclr.methods.training_images import TrainingImages
from clusterclr.models.batch_norm import batch_statistics_only, running_statistics
from clusterclr.models.cluster_heads import StudentTCentres
from clusterclr.models.heads import SimCLRProjector
from clusterclr.optim import ParameterGroup


class CenterPredictorOptions(MethodOptions):
    temperature: PositiveFloat = 0.5
    projection_hidden_dim: PositiveInt = 512
    projection_dim: PositiveInt = 128
    student_t_alpha: PositiveFloat = 1.0
    instance_weight: NonNegativeFloat = 1.0  # α
    cluster_weight: NonNegativeFloat = 1.0  # β
    anchor_weight: NonNegativeFloat = 1.0  # γ
    init_kmeans_restarts: PositiveInt = 5
    cluster_warmup_epochs: NonNegativeInt = 0  # instance-only epochs before the centres are set (paper: 0)
    balance_weight: NonNegativeFloat = 0.0  # λ on log K − H(cluster marginal); not in the paper
    # The centres' learning rate as a multiple of the base rate (DEC-style centres often train at ×10–×100).
    centre_lr_scale: PositiveFloat = 1.0
    # Batch norm on the clean view: its own training-mode pass (the paper), the running statistics,
    # its batch statistics without keeping them, or one pass with the augmented views.
    clean_view_norm: Literal["separate", "running", "batch", "joint"] = "separate"

    @model_validator(mode="after")
    def _some_loss(self) -> CenterPredictorOptions:
        if self.instance_weight == self.cluster_weight == self.anchor_weight == self.balance_weight == 0:
            raise ValueError("instance_weight, cluster_weight, anchor_weight and balance_weight are all 0: nothing to train")
        return self


@register_method
class CenterPredictor(Method):
    """Centre predictor: NT-Xent + DEC clustering loss on the clean view + anchor loss tying augmented views to it."""

    name = "center_predictor"
    Options = CenterPredictorOptions
    cluster_head_attribute = "centres"
    needs_clean_view = True
    has_idle_parameters = True  # the centres, before they are set

    def __init__(
        self, backbone: nn.Module, options: CenterPredictorOptions, data: DataInfo, gather_negatives: bool = True
    ) -> None:
        super().__init__(backbone, options, data, gather_negatives)
        self.projector = SimCLRProjector(backbone.feature_dim, options.projection_hidden_dim, options.projection_dim)
        self.centres = StudentTCentres(data.required_clusters(), backbone.feature_dim, options.student_t_alpha)
        self._clustering: bool | None = None  # mirrors centres.initialised without a host sync per step

    def on_epoch_start(self, epoch: int, images: TrainingImages) -> dict[str, Any]:
        if self.centres.initialised or epoch < self.options.cluster_warmup_epochs:
            return {}
        # k-means on the clean-view features at the scale the Student-t kernel sees them at in
        # training steps: batch statistics, unless the clean view is normalised by running ones.
        running = self.options.clean_view_norm == "running"
        features = images.encode(self.backbone, self.backbone, batch_statistics=not running)
        fitted = distributed.on_main_then_broadcast(
            kmeans, features.cpu(), len(self.centres.centres), seed=images.seed, restarts=self.options.init_kmeans_restarts
        )
        self.centres.initialise(torch.from_numpy(fitted.centroids).to(features.device))
        self._clustering = True
        sizes = torch.from_numpy(fitted.assignments).bincount(minlength=len(fitted.centroids))
        return {"centre_init_inertia": fitted.inertia, "centre_init_cluster_sizes": sizes.tolist()}

    def training_step(self, batch: Batch) -> StepOutput:
        o = self.options
        if self._clustering is None:
            self._clustering = bool(self.centres.initialised)
        joint = self._clustering and o.clean_view_norm == "joint"
        features = self.backbone(torch.cat([*batch.views, batch.clean] if joint else batch.views))
        augmented = features[: -len(batch.clean)] if joint else features
        z = self.projector(augmented)
        instance = GlobalViews.of(z, batch.indices, len(batch.views), self.gather_negatives).nt_xent(o.temperature)
        if not self._clustering:
            return StepOutput(instance, {"loss": instance.detach(), "output_std": normalised_std(z)})
        q_clean = self.centres(features[-len(batch.clean) :] if joint else self._clean_features(batch.clean))
        # DEC's target divides by each cluster's soft frequency over the global batch.
        clustering = clustering_loss(q_clean, distributed.all_sum(q_clean.detach().float().sum(0)))
        anchor = anchor_loss(q_clean, list(self.centres(augmented).chunk(len(batch.views))))
        # Logged whatever its weight: 0 when the batch's images spread evenly over the clusters.
        balance = marginal_entropy_gap(distributed.gather(q_clean))
        loss = o.instance_weight * instance + o.cluster_weight * clustering + o.anchor_weight * anchor + o.balance_weight * balance
        return StepOutput(loss, {
            "loss": loss.detach(),
            "instance": instance.detach(),
            "clustering": clustering.detach(),
            "anchor": anchor.detach(),
            "balance": balance.detach(),
            "clusters_used": clusters_used(q_clean),
            "output_std": normalised_std(z),
        })

    def _clean_features(self, clean: torch.Tensor) -> torch.Tensor:
        """The backbone on the clean view in a pass of its own, batch norm as ``clean_view_norm`` says."""
        how = self.options.clean_view_norm
        norm = running_statistics if how == "running" else batch_statistics_only if how == "batch" else None
        with norm(self.backbone) if norm else nullcontext():
            return self.backbone(clean)

    def parameter_groups(self) -> list[ParameterGroup]:
        return [ParameterGroup("centres", (self.centres.centres,), self.options.centre_lr_scale, weight_decay=0.0)]

    @torch.no_grad()
    def cluster_probabilities(self, features: torch.Tensor) -> torch.Tensor | None:
        # Centres are set at the start of the first epoch; a run stopped before it has no head yet.
        return self.centres(features) if self.centres.initialised else None
