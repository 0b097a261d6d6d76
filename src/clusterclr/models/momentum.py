"""Momentum (EMA) copies of a network: MoCo's key encoder, BYOL's target."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class MomentumEncoder(nn.Module):
    """A frozen copy of the ``online`` modules, applied in sequence, that follows them by EMA.

    After each optimiser step, ``update`` sets every parameter
    θ_k ← m·θ_k + (1 − m)·θ_q (He et al., 2020). Batch-norm running
    statistics are the copy's own, gathered by its own forward passes.
    No gradient ever reaches the copy.
    """

    def __init__(self, *online: nn.Module) -> None:
        super().__init__()
        self.network = copy.deepcopy(nn.Sequential(*online))
        for p in self.network.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, *online: nn.Module, momentum: float) -> None:
        targets = list(self.network.parameters())
        sources = [p.detach() for module in online for p in module.parameters()]
        if len(sources) != len(targets):
            raise ValueError(f"the momentum copy has {len(targets)} parameters, the online modules {len(sources)}")
        # One fused call for every parameter: θ_k + (1 − m)(θ_q − θ_k) = m·θ_k + (1 − m)·θ_q.
        torch._foreach_lerp_(targets, sources, 1.0 - momentum)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)


def momentum_at(base: float, progress: float, schedule: str) -> float:
    """EMA momentum at ``progress`` ∈ [0, 1] of training.

    ``constant`` keeps ``base``; ``cosine`` rises from ``base`` to 1 along a
    half cosine (Grill et al., 2020), so the target freezes as training ends.
    """
    if schedule == "constant":
        return base
    if schedule == "cosine":
        return 1.0 - (1.0 - base) * (math.cos(math.pi * min(max(progress, 0.0), 1.0)) + 1) / 2
    raise ValueError(f"unknown momentum schedule {schedule!r}")
