"""A memory bank with pseudo-labels: one feature and one cluster per training image (InterCLR, ODC).

The bank is filled once from features of every training image and clustered
by k-means. From then on each step overwrites the batch's rows with the
momentum encoder's keys and relabels them to their most similar centroid,
and every ``refresh_every`` writes the centroids are recomputed from the
whole bank, small clusters dissolved and empty ones refilled by splitting
the largest (``clustering/online.py``). ``refit`` clusters the bank's
current features afresh by k-means, for a method that re-fits on a
schedule: online updates only move the centroids a little at a time, so
clusters fitted to an untrained encoder's features otherwise linger.
Everything is a registered buffer, the write counter included, so a
checkpoint carries the bank and a resumed run refreshes at the same steps.

Memory. N images × D dims: features N·D in ``dtype``, labels N int64,
centroids K·D float32. At ImageNet scale (N = 1,281,167, D = 128,
K = 10,000) that is 656 MB of float32 features, 10 MB of labels and 5 MB of
centroids; ``dtype=torch.bfloat16`` (or float16) halves the features to
328 MB. Either fits a GPU comfortably beside a ResNet-50; on the host, the
k-means that fills the bank needs one float32 copy (656 MB) once. The
per-step writes touch only the batch's rows; a refresh sums the bank in
float32 chunks of 65,536 rows rather than converting all of it at once.
The samplers that read the bank (``positives/cluster_mates.py``) cost more
than the bank itself: see there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clusterclr import distributed
from clusterclr.clustering.kmeans import kmeans
from clusterclr.clustering.online import (
    centroid_means,
    dissolve_small_clusters,
    nearest_centroid,
    split_into_empty_clusters,
)


class MemoryBank(nn.Module):
    """N L2-normalised features with pseudo-labels from K online-clustered centroids."""

    def __init__(
        self,
        num_images: int,
        dim: int,
        clusters: int,
        refresh_every: int = 10,
        min_cluster_size: int = 20,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if not 1 <= clusters <= num_images:
            raise ValueError(f"clusters must be between 1 and the {num_images} images, got {clusters}")
        self.refresh_every = refresh_every
        self.min_cluster_size = min_cluster_size
        self.register_buffer("features", torch.zeros(num_images, dim, dtype=dtype))
        self.register_buffer("labels", torch.zeros(num_images, dtype=torch.long))
        self.register_buffer("centroids", torch.zeros(clusters, dim))
        self.register_buffer("writes", torch.zeros((), dtype=torch.long))
        # A host-side copy of ``writes``, so deciding when to refresh never waits on the device.
        self._writes: int | None = None
        self.register_load_state_dict_post_hook(lambda module, _: setattr(module, "_writes", None))

    @property
    def num_clusters(self) -> int:
        return len(self.centroids)

    @torch.no_grad()
    def initialise(self, features: torch.Tensor, seed: int, restarts: int = 3) -> float:
        """Fill the bank with ``features`` (N × D) and label them by spherical k-means, then refresh; returns the inertia."""
        if features.shape != self.features.shape:
            raise ValueError(f"expected features of shape {tuple(self.features.shape)}, got {tuple(features.shape)}")
        self.features.copy_(F.normalize(features.float(), dim=1))
        inertia = self.refit(seed, restarts)
        self.writes.zero_()
        self._writes = 0
        return inertia

    @torch.no_grad()
    def refit(self, seed: int, restarts: int = 3) -> float:
        """Label the bank's features afresh by spherical k-means, then refresh; returns the k-means inertia.

        Every rank holds the same bank; rank 0 clusters it and broadcasts.
        """
        fitted = distributed.on_main_then_broadcast(
            kmeans, self.features.float().cpu(), self.num_clusters, seed=seed, restarts=restarts, spherical=True
        )
        self.labels.copy_(torch.from_numpy(fitted.assignments))
        self.centroids.copy_(torch.from_numpy(fitted.centroids))
        self.refresh()
        return fitted.inertia

    @torch.no_grad()
    def write(self, indices: torch.Tensor, keys: torch.Tensor) -> None:
        """Overwrite rows ``indices`` with the normalised ``keys`` and relabel them; refresh every ``refresh_every`` writes."""
        keys = F.normalize(keys.detach().float(), dim=1)
        self.features[indices] = keys.to(self.features.dtype)
        self.labels[indices] = nearest_centroid(keys, self.centroids)
        if self._writes is None:
            self._writes = int(self.writes)
        self._writes += 1
        self.writes.fill_(self._writes)
        if self._writes % self.refresh_every == 0:
            self.refresh()

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute the centroids, dissolve clusters under ``min_cluster_size``, refill empty ones by splitting."""
        centroids = centroid_means(self.features, self.labels, self.centroids)
        labels = dissolve_small_clusters(self.features, self.labels, centroids, self.min_cluster_size)
        labels = split_into_empty_clusters(self.features, labels, self.num_clusters)
        self.labels.copy_(labels)
        self.centroids.copy_(centroid_means(self.features, labels, centroids))
        # Every rank holds the same bank, but floating-point sums on a GPU need not agree to the bit:
        # rank 0's clustering is everyone's.
        distributed.broadcast(self.labels, self.centroids)
