"""Heads that assign features to clusters: learnable centres, and a softmax classifier."""

from __future__ import annotations

import torch
from torch import nn

from clusterclr.losses.dec import student_t_assignment
from clusterclr.models.heads import MLPHead


class StudentTCentres(nn.Module):
    """K learnable centres in feature space; soft assignment by a Student-t kernel (DEC).

    The centres start at zero and must be set from data (k-means) with
    ``initialise`` before training; ``initialised`` is a buffer so a
    checkpoint records whether that happened.
    """

    def __init__(self, clusters: int, dim: int, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = alpha
        self.centres = nn.Parameter(torch.zeros(clusters, dim))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def initialise(self, centroids: torch.Tensor) -> None:
        if centroids.shape != self.centres.shape:
            raise ValueError(f"expected {tuple(self.centres.shape)} centroids, got {tuple(centroids.shape)}")
        self.centres.copy_(centroids)
        self.initialised.fill_(True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return student_t_assignment(features, self.centres, self.alpha)


class SoftmaxClusterHead(nn.Sequential):
    """Contrastive Clustering's cluster projector: a two-layer MLP to K logits, then softmax."""

    def __init__(self, in_dim: int, hidden_dim: int, clusters: int) -> None:
        super().__init__(MLPHead(in_dim, hidden_dim, clusters, hidden_bn=False), nn.Softmax(dim=1))
