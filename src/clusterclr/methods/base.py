"""What every method is: a module that turns a batch of views into a loss.

The training loop knows nothing else about a method. A method owns its
networks (backbone plus heads), says how many augmented views it needs and
whether it wants the clean view, and may keep state between steps (momentum
encoders, queues, memory banks) through ``after_optimizer_step``.

Work that needs the whole training set (k-means for cluster centres or a
memory bank, mining semantic partners) happens in ``on_epoch_start``, which
sees every clean training image through ``TrainingImages``
(``methods/training_images.py``). Whatever it computes must live in
buffers, so a checkpoint carries it and a resumed run does not redo it with
different weights.

A method's options are a ``MethodOptions`` model (``clusterclr.config``),
validated once by ``clusterclr.configure``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from clusterclr.config import MethodOptions
from clusterclr.errors import UserError
from clusterclr.optim import ParameterGroup

if TYPE_CHECKING:
    from clusterclr.methods.training_images import TrainingImages


# Marks a module that ``freeze`` froze; copies made of it later (momentum encoders) carry the mark.
FROZEN = "clusterclr_frozen"


def freeze(module: nn.Module) -> None:
    """No gradients and no updates for ``module``: its parameters stay as they are, and in a method's
    training mode its batch norm keeps its running statistics (``Method.train``)."""
    module.requires_grad_(False)
    setattr(module, FROZEN, True)


@dataclass(frozen=True)
class DataInfo:
    """What a method may need to know about its training data and task."""

    num_images: int
    num_classes: int | None  # None for unlabelled data; never used for training
    channels: int
    image_size: tuple[int, int]
    # K, resolved once from the config (``configure.resolve_clusters``): a cluster head's size, and
    # the default of a method's own clustering granularity. None only where no K is known; "auto" when
    # it is chosen from the trained features.
    clusters: int | str | None = None

    def required_clusters(self, minimum: int = 2) -> int:
        """K, for a method that cannot work without it."""
        if self.clusters is None:
            raise UserError("the training data has no labels to count clusters from: set the number of clusters with --set clusters=K")
        if self.clusters == "auto":
            raise UserError(
                "clusters=auto chooses K from trained features, and this method needs K before training; give a number "
                "(clusterclr stage RUN_DIR --clusters auto chooses K for a cluster head after training)"
            )
        if not minimum <= self.clusters <= self.num_images:
            raise UserError(f"clusters={self.clusters} must lie between {minimum} and the {self.num_images} training images")
        return self.clusters


@dataclass
class Batch:
    views: list[torch.Tensor]  # augmented views, each N×C×H×W, normalised
    indices: torch.Tensor  # the images' rows in the training set
    clean: torch.Tensor | None = None  # the non-augmented view, when the method asks for it


@dataclass
class StepOutput:
    loss: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)


class Method(nn.Module):
    name: ClassVar[str]
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    num_views: ClassVar[int] = 2
    needs_clean_view: ClassVar[bool] = False
    # Some steps leave parameters out of the loss (DistributedDataParallel must then look for them).
    has_idle_parameters: ClassVar[bool] = False
    # The attribute holding the module behind ``cluster_probabilities``, for methods that own a
    # cluster head: evaluated by the head protocol and exported with the backbone.
    cluster_head_attribute: ClassVar[str | None] = None
    # Old -> current prefixes of state-dict keys, so checkpoints of earlier versions still load.
    legacy_state_prefixes: ClassVar[dict[str, str]] = {}

    def __init__(self, backbone: nn.Module, options: MethodOptions, data: DataInfo, gather_negatives: bool = True) -> None:
        """``gather_negatives``: in a distributed run, contrast with every rank's views and keys, not this rank's alone."""
        super().__init__()
        self.backbone = backbone
        self.options = options
        self.data = data
        self.gather_negatives = gather_negatives

    def training_step(self, batch: Batch) -> StepOutput:
        raise NotImplementedError

    def forward(self, batch: Batch) -> StepOutput:
        # The step is the forward pass, so DistributedDataParallel can wrap a method.
        return self.training_step(batch)

    def after_optimizer_step(self, progress: float) -> None:
        """Hook for state that follows the weights (EMA, queues); ``progress`` runs 0 → 1 over training."""

    def on_epoch_start(self, epoch: int, images: TrainingImages) -> dict[str, Any]:
        """Work over the whole training set before epoch ``epoch`` (0-based); returns values to log.

        Must be deterministic (seed any randomness from ``images.seed`` and
        ``epoch``): a run resumed from an epoch boundary calls it again there.
        A run resumed mid-epoch does not; it has the hook's results from the
        checkpoint's buffers.
        """
        return {}

    def epoch_order(self) -> torch.Tensor:
        """The order an epoch visits the training images in, drawn from the global RNG."""
        return torch.randperm(self.data.num_images)

    def parameter_groups(self) -> list[ParameterGroup]:
        """Parameters to optimise their own way (``optim.ParameterGroup``): a rate multiplier (DEC-style
        centres often train at ×10–×100), their own weight decay (0 for centres, which decay would drag
        towards the origin) or a fixed rate (SimSiam's predictor). The backbone is the config's
        (``optim.backbone_lr_scale``) and may not be declared here; everything undeclared trains at the base rate."""
        return []

    def train(self, mode: bool = True) -> Method:
        super().train(mode)
        for module in self.modules():
            if getattr(module, FROZEN, False):
                module.eval()  # a frozen backbone keeps its batch-norm statistics as loaded
        return self

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Features used for evaluation and export: the backbone's pooled output."""
        return self.backbone(images)

    def cluster_head_module(self) -> nn.Module | None:
        return None if self.cluster_head_attribute is None else getattr(self, self.cluster_head_attribute)

    @torch.no_grad()
    def cluster_probabilities(self, features: torch.Tensor) -> torch.Tensor | None:
        """Soft cluster assignments (N × K) from ``embed``'s features, for methods that own a cluster head."""
        return None
