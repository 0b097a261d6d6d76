"""Heads that assign features to clusters: learnable centres, a softmax classifier, and many heads at once."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
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


class MultiHeadClassifier(nn.Module):
    """H independent cluster heads of K outputs each on D-dim features, run as one batched product.

    Linear heads (SCAN's), or with ``hidden_dim`` a two-layer MLP per head
    (Linear → ReLU → Linear; no batch norm, so a head's output for an image
    does not depend on the rest of its batch). ``forward`` returns logits
    H × N × K; a head's cluster probabilities are their softmax.

    ``cosine=True`` makes the last layer compare the L2-normalised input
    with L2-normalised cluster vectors, without bias: the logits are cosine
    similarities in [-1, 1], meant to be divided by a temperature (TEMI's
    heads, like DINO's, end this way). Bounded logits keep a low
    temperature from making the predictions one-hot within a few steps.

    Weights and biases are drawn as ``nn.Linear``'s, uniform in
    ±1/sqrt(fan_in), from ``generator``: heads built with one seed are
    identical, and building them leaves the global RNG alone.
    """

    def __init__(
        self,
        in_dim: int,
        clusters: int,
        heads: int = 1,
        hidden_dim: int | None = None,
        cosine: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if min(in_dim, clusters, heads) < 1 or (hidden_dim is not None and hidden_dim < 1):
            raise ValueError(f"dimensions must be positive: in_dim={in_dim}, clusters={clusters}, heads={heads}, hidden_dim={hidden_dim}")
        self.in_dim, self.clusters, self.hidden_dim, self.cosine = in_dim, clusters, hidden_dim, cosine
        widths = [in_dim, clusters] if hidden_dim is None else [in_dim, hidden_dim, clusters]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for layer, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
            bound = 1 / math.sqrt(fan_in)
            self.weights.append(nn.Parameter((torch.rand(heads, fan_in, fan_out, generator=generator) * 2 - 1) * bound))
            if not (cosine and layer == len(widths) - 2):
                self.biases.append(nn.Parameter((torch.rand(heads, 1, fan_out, generator=generator) * 2 - 1) * bound))

    @property
    def heads(self) -> int:
        return self.weights[0].shape[0]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits H × N × K of features N × D."""
        x = features.expand(self.heads, -1, -1)
        for layer, weight in enumerate(self.weights):
            if layer:
                x = torch.relu(x)
            if layer < len(self.biases):
                x = torch.baddbmm(self.biases[layer], x, weight)
            else:
                x = torch.bmm(F.normalize(x, dim=-1), F.normalize(weight, dim=-2))
        return x

    def keep(self, head: int) -> MultiHeadClassifier:
        """A one-head classifier holding a copy of head ``head``."""
        if not 0 <= head < self.heads:
            raise IndexError(f"head {head} of {self.heads}")
        kept = copy.deepcopy(self)
        with torch.no_grad():
            for params in (kept.weights, kept.biases):
                for i, p in enumerate(params):
                    params[i] = nn.Parameter(p[head : head + 1].clone())
        return kept


def lowest_loss_head(losses: torch.Tensor) -> int:
    """Index of the smallest of per-head ``losses`` (H,); a non-finite loss never wins unless all are."""
    losses = losses.detach().double().cpu()
    return int(torch.where(torch.isfinite(losses), losses, torch.full_like(losses, math.inf)).argmin())
