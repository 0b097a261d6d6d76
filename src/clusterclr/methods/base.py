"""What every method is: a module that turns a batch of views into a loss.

The training loop knows nothing else about a method. A method owns its
networks (backbone plus heads), says how many augmented views it needs and
whether it wants the clean view, and may keep state between steps (momentum
encoders, queues, memory banks) through ``after_optimizer_step``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

from clusterclr.models.backbones import ResNet


class MethodOptions(BaseModel):
    """Base for a method's options (the ``method:`` section of a config)."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class DataInfo:
    """What a method may need to know about its training data."""

    num_images: int
    num_classes: int | None  # None for unlabelled data; never used for training
    channels: int
    image_size: tuple[int, int]


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

    def __init__(self, backbone: ResNet, options: MethodOptions, data: DataInfo) -> None:
        super().__init__()
        self.backbone = backbone
        self.options = options
        self.data = data

    def training_step(self, batch: Batch) -> StepOutput:
        raise NotImplementedError

    def after_optimizer_step(self, progress: float) -> None:
        """Hook for state that follows the weights (EMA, queues); ``progress`` runs 0 → 1 over training."""

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Features used for evaluation and export: the backbone's pooled output."""
        return self.backbone(images)

    @torch.no_grad()
    def cluster_probabilities(self, features: torch.Tensor) -> torch.Tensor | None:
        """Soft cluster assignments (N × K) from ``embed``'s features, for methods that own a cluster head."""
        return None


def normalised_std(z: torch.Tensor) -> torch.Tensor:
    """Collapse diagnostic: per-dimension std of L2-normalised outputs, averaged.

    About 1/sqrt(dim) for well-spread outputs, 0 when every input maps to one
    point (Chen & He, 2021, Fig. 2).
    """
    return F.normalize(z.detach().float(), dim=1).std(dim=0).mean()
