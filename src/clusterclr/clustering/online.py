r"""Online clustering: pseudo-labels that follow a memory bank as its features change.

ODC's scheme (Zhan et al., 2020), which InterCLR runs on its memory bank
(Xie et al., 2022). Features :math:`f_i` and centroids :math:`c_k` are
L2-normalised, so the most similar centroid is also the nearest in L2.

- **relabel**: a newly written feature takes the label of its most similar
  centroid, :math:`y_i = \arg\max_k f_i \cdot c_k`.
- **centroids**: each centroid becomes the normalised mean of its members,
  :math:`c_k = \sum_{y_i = k} f_i \,/\, \lVert \sum_{y_i = k} f_i \rVert`
  (spherical k-means' update); a cluster without members keeps its centroid.
- **dissolve**: the members of every cluster with fewer than ``min_size``
  members move to their most similar centroid among the clusters that stay,
  which leaves the small clusters empty. The largest cluster always stays,
  so the members always have somewhere to go.
- **split**: each empty cluster takes half of the then largest cluster,
  split by spherical 2-means, so all K clusters stay in use. The split is
  deterministic (its 2-means starts from the two mutually farthest members
  it finds, not from random points), so a resumed run splits the same way.

Relabelling is per step and pure tensor work. Dissolving and splitting loop
over the empty clusters on the host, which is why they run only at a
refresh (every few steps), never per step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Rows converted to float32 at a time when a low-precision bank is summed.
_CHUNK = 1 << 16


def nearest_centroid(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of each feature's most similar centroid (N, int64)."""
    return (features.to(centroids.dtype) @ centroids.T).argmax(1)


def centroid_means(features: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Normalised mean feature of each cluster (K × D float32); empty clusters keep ``centroids``' row."""
    sums = torch.zeros_like(centroids)
    for start in range(0, len(features), _CHUNK):
        sums.index_add_(0, labels[start : start + _CHUNK], features[start : start + _CHUNK].to(sums.dtype))
    occupied = torch.bincount(labels, minlength=len(centroids)) > 0
    return torch.where(occupied[:, None], F.normalize(sums, dim=1), centroids)


def dissolve_small_clusters(
    features: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor, min_size: int
) -> torch.Tensor:
    """Labels with every cluster under ``min_size`` members emptied into its members' most similar kept cluster."""
    sizes = torch.bincount(labels, minlength=len(centroids))
    small = sizes < min_size
    small[sizes.argmax()] = False
    moving = small[labels]
    if not moving.any():
        return labels
    kept = (~small).nonzero().squeeze(1)
    labels = labels.clone()
    labels[moving] = kept[nearest_centroid(features[moving], centroids[kept])]
    return labels


def split_into_empty_clusters(features: torch.Tensor, labels: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """Labels where every empty cluster has taken half of the largest cluster at its turn.

    Needs at least as many features as clusters: then an empty cluster means
    some cluster has two members or more to split.
    """
    sizes = torch.bincount(labels, minlength=num_clusters)
    empty = (sizes == 0).nonzero().squeeze(1).tolist()
    if not empty:
        return labels
    if len(labels) < num_clusters:
        raise ValueError(f"{num_clusters} clusters cannot all be filled from {len(labels)} features")
    labels = labels.clone()
    for cluster in empty:
        largest = sizes.argmax()
        members = (labels == largest).nonzero().squeeze(1)
        moved = members[_two_means(features[members].float())]
        labels[moved] = cluster
        sizes[largest] -= len(moved)
        sizes[cluster] = len(moved)
    return labels


def _two_means(x: torch.Tensor, iterations: int = 10) -> torch.Tensor:
    """A split of the rows of ``x`` (M ≥ 2, normalised) into two non-empty groups: True marks the second."""
    first = x[(x @ F.normalize(x.mean(0), dim=0)).argmin()]  # the member least like the mean
    second = x[(x @ first).argmin()]  # and the member least like that one
    for _ in range(iterations):
        in_second = x @ second > x @ first
        if not 0 < int(in_second.sum()) < len(x):
            break
        first, second = F.normalize(x[~in_second].mean(0), dim=0), F.normalize(x[in_second].mean(0), dim=0)
    in_second = x @ second > x @ first
    if not 0 < int(in_second.sum()) < len(x):
        # Identical features have no direction to split along: halve by position.
        in_second = torch.arange(len(x), device=x.device) >= len(x) // 2
    return in_second
