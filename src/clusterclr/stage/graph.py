"""The neighbour graph of a feature set: each image's k most similar others, mined once, used by every part of the stage.

Features are centred (the data set's mean subtracted) and L2-normalised
before anything is compared. Centring matters for the features of ReLU
networks: they are all non-negative, so every pair of images has a high
raw cosine similarity (0.5–0.9 is common) and a fixed threshold means
little; relative to the mean, cosine similarity measures how two images
differ from the typical one. The cluster heads read the same prepared
features, so the heads, the neighbours, the near-duplicates and the
atypicality scores all see one geometry.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from clusterclr.errors import UserError
from clusterclr.positives.semantic import mine_partners


class NeighbourGraph(NamedTuple):
    """``indices`` N × k int64 rows of each image's neighbours, most similar first; ``similarities`` N × k float32 cosines."""

    indices: torch.Tensor
    similarities: torch.Tensor

    @property
    def neighbours(self) -> int:
        return self.indices.shape[1]


def check_features(features: torch.Tensor, what: str = "features") -> None:
    """UserError unless ``features`` is a finite N × D matrix with N >= 2."""
    if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
        raise UserError(f"{what}: expected a non-empty N × D matrix, got shape {tuple(features.shape)}")
    if features.shape[0] < 2:
        raise UserError(f"{what}: one image cannot be clustered; need at least 2")
    if not torch.isfinite(features).all():
        raise UserError(f"{what}: contain NaN or infinite values")


def prepare(features: torch.Tensor) -> torch.Tensor:
    """Float32 features, centred on their mean and L2-normalised row by row."""
    x = features.detach().float()
    return F.normalize(x - x.mean(dim=0), dim=1)


def neighbour_graph(features: torch.Tensor, neighbours: int) -> NeighbourGraph:
    """Each image's ``neighbours`` most cosine-similar other images, on :func:`prepare`'d ``features`` (N × D)."""
    check_features(features)
    if not 1 <= neighbours < len(features):
        raise UserError(f"neighbours must be between 1 and the number of images minus one ({len(features) - 1}), got {neighbours}")
    mined = mine_partners(prepare(features), neighbours)
    return NeighbourGraph(mined.partners, mined.similarities)
