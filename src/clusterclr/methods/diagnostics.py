"""What a method logs about its own health at every step, computed on the device (no host sync)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def normalised_std(z: torch.Tensor) -> torch.Tensor:
    """Collapse diagnostic: per-dimension std of L2-normalised outputs, averaged.

    About 1/sqrt(dim) for well-spread outputs, 0 when every input maps to one
    point (Chen & He, 2021, Fig. 2).
    """
    return F.normalize(z.detach().float(), dim=1).std(dim=0).mean()


def clusters_used(assignments: torch.Tensor) -> torch.Tensor:
    """Collapse diagnostic for a cluster head: how many of the K clusters are some row's argmax, from N × K assignments."""
    hits = torch.zeros(assignments.shape[1], device=assignments.device)
    hits.index_fill_(0, assignments.detach().argmax(1), 1.0)
    return hits.sum()
