"""A backbone named by plain data: what a run's config records to rebuild an architecture later.

Weights loaded from a file (``clusterclr.models.pretrained``) come with the
spec of the backbone they were loaded into, so a checkpoint of a run that
started from them can be rebuilt without the original file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from clusterclr.models.backbones import BACKBONES, build_backbone
from clusterclr.models.vit import VITS, build_vit


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone's name (``resnet50``, ``vit_small``, ``vit``, …) and its builder's keyword arguments."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> nn.Module:
        if self.name in BACKBONES:
            return build_backbone(self.name, **self.kwargs)
        if self.name in VITS:
            return build_vit(self.name, **self.kwargs)
        raise ValueError(f"unknown backbone {self.name!r}; choose one of {', '.join(BACKBONES + VITS)}")
