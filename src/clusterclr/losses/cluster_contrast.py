r"""Contrastive Clustering's cluster-level loss (Li et al., AAAI 2021).

A cluster head maps each view of a batch of :math:`N` images to soft
assignments :math:`Y^a, Y^b \in \mathbb{R}^{N \times K}` (rows sum to 1).
Column :math:`k` of :math:`Y^a` is cluster :math:`k`'s "representation" as
seen through view :math:`a`: its responsibility for every image. The two
columns of one cluster are a positive pair; the other :math:`2K - 2` columns
are negatives. That is NT-Xent over the :math:`2K` columns (cosine
similarity, temperature :math:`\tau`, 1.0 in the paper):

.. math::

    \mathcal{L}_{col} = \frac{1}{2K} \sum_{k=1}^{K}
        \big(\ell(y^a_k, y^b_k) + \ell(y^b_k, y^a_k)\big)

Contrasting columns alone is solved by putting every image in one cluster,
so the loss subtracts the entropy of each view's cluster marginal
:math:`P(y_k) = \sum_i Y_{ik} / N`, written (as in the paper's code) with
the constant :math:`\log K` that makes the term zero at the uniform marginal:

.. math::

    \mathcal{L} = \mathcal{L}_{col}
        + \sum_{v \in \{a, b\}} \big(\log K - H(P(y^v))\big)

Nothing here depends on the batch size: the masks are built from ``K``.
"""

from __future__ import annotations

import math

import torch

from clusterclr.losses.contrastive import nt_xent
from clusterclr.positives.views import same_image


def marginal_entropy_gap(assignments: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """log K − H(cluster marginal) of N × K soft assignments: 0 when clusters are used evenly."""
    marginal = assignments.float().sum(dim=0)
    marginal = marginal / marginal.sum()
    entropy = -(marginal * torch.log(marginal.clamp_min(eps))).sum()
    return math.log(assignments.shape[1]) - entropy


def cluster_contrast(first: torch.Tensor, second: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """CC's cluster-level loss for two views' soft assignments (each N × K)."""
    if first.shape != second.shape:
        raise ValueError(f"the views' assignments differ in shape: {tuple(first.shape)} vs {tuple(second.shape)}")
    clusters = first.shape[1]
    # The columns as "views" of the clusters: row k is view a of cluster k, row K + k view b.
    columns = torch.cat([first.T, second.T])
    contrast = nt_xent(columns, same_image(clusters, 2, device=columns.device), temperature)
    return contrast + marginal_entropy_gap(first) + marginal_entropy_gap(second)
