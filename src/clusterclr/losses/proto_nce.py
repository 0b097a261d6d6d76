r"""PCL's ProtoNCE prototype term and its per-cluster concentration (Li et al., ICLR 2021).

The training set is clustered M times (granularities :math:`K_1 \dots K_M`
clusters). For a query :math:`v_i`, with :math:`s = y^m_i` the cluster of
its image in clustering :math:`m`, L2-normalised prototypes :math:`c^m_k`
and concentrations :math:`\phi^m_k`:

.. math::

    \mathcal{L}_{proto} = \frac{1}{M} \sum_{m=1}^{M}
        -\log \frac{\exp(v_i \cdot c^m_s / \phi^m_s)}
                   {\sum_{k \in C^m} \exp(v_i \cdot c^m_k / \phi^m_k)}

averaged over the queries, where :math:`C^m` is every prototype, or a
subset given by ``included`` (the paper's positive prototypes of the batch
plus :math:`r` sampled others); a query's own prototype always counts.
ProtoNCE is InfoNCE plus this term; the method adds the two.

Each prototype has its own temperature, the concentration of its cluster:
over the :math:`Z` members :math:`v_z` of cluster :math:`k`, at distance
:math:`\lVert v_z - \bar c_k \rVert` from the cluster's mean
:math:`\bar c_k` (the k-means centroid, before normalisation),

.. math::

    \phi_k = \frac{\sum_{z=1}^{Z} \lVert v_z - \bar c_k \rVert}{Z \log(Z + \alpha)},
    \qquad \alpha = 10.

Loose clusters get a large :math:`\phi` (their features are pulled
gently), tight ones a small :math:`\phi`; the :math:`\log(Z+\alpha)` keeps
small tight clusters from getting a vanishing one. As in the authors'
code, a cluster with at most one member takes the largest :math:`\phi`,
all are clamped to their 10th–90th percentile, and then scaled so that the
mean :math:`\phi` equals the temperature :math:`\tau` of the InfoNCE term.

One addition of ours, off by default: ``floor`` raises every :math:`\phi`
to at least ``floor`` times their mean before the rescaling. The percentile
clamp only bites with many clusters (the paper has 25,000 and more); with
tens of clusters one tight cluster keeps a tiny :math:`\phi`, and since a
prototype's logit ranges over :math:`\pm 1/\phi`, it then dominates every
query's softmax (ProtoNCE reached :math:`10^5` on digits with 10 clusters).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def proto_nce(
    queries: torch.Tensor,
    prototypes: Sequence[torch.Tensor],
    assignments: Sequence[torch.Tensor],
    concentrations: Sequence[torch.Tensor],
    included: Sequence[torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """Prototype term of B ``queries`` (B × D), averaged over the M clusterings.

    Per clustering: ``prototypes`` K × D, ``assignments`` the queries'
    clusters (B, int64), ``concentrations`` φ (K), ``included`` an optional
    boolean K-vector of the prototypes in the denominator.
    """
    if not len(prototypes) == len(assignments) == len(concentrations) > 0:
        raise ValueError("prototypes, assignments and concentrations need one entry per clustering, at least one")
    included = included if included is not None else [None] * len(prototypes)
    with torch.autocast(queries.device.type, enabled=False):
        q = F.normalize(queries.float(), dim=1)
        losses = []
        for c, y, phi, keep in zip(prototypes, assignments, concentrations, included, strict=True):
            logits = q @ F.normalize(c.float(), dim=1).T / phi.float()
            if keep is not None:
                own = torch.arange(len(c), device=y.device)[None, :] == y[:, None]
                logits = logits.masked_fill(~(keep[None, :] | own), float("-inf"))
            losses.append(F.cross_entropy(logits, y))
    return torch.stack(losses).mean()


def concentration(
    features: torch.Tensor,
    centroids: torch.Tensor,
    assignments: torch.Tensor,
    temperature: float,
    alpha: float = 10.0,
    floor: float = 0.0,
) -> torch.Tensor:
    """φ of each of the K clusters (float32), from the clustered ``features`` (N × D) and their k-means ``centroids``."""
    k = len(centroids)
    distances = (features.float() - centroids.float()[assignments]).norm(dim=1)
    sizes = torch.bincount(assignments, minlength=k).float()
    phi = torch.zeros(k, device=features.device).index_add_(0, assignments, distances) / (sizes * torch.log(sizes + alpha))
    several = sizes > 1
    phi = torch.where(several, phi, phi[several].max() if several.any() else torch.ones(()))
    low, high = torch.quantile(phi, torch.tensor([0.1, 0.9], device=phi.device))
    # A cluster of identical features has φ = 0; the floor keeps the rescaling finite.
    phi = phi.clamp(low, high)
    phi = phi.clamp_min(floor * phi.mean()).clamp_min(torch.finfo(phi.dtype).tiny)
    return temperature * phi / phi.mean()
