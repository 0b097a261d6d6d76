"""Prototypes of one clustering of the training set, for PCL's ProtoNCE.

k-means on the L2-normalised features of every training image (plain
Euclidean k-means, as in PCL), then per cluster: the normalised centroid
(the prototype), its concentration φ (``losses/proto_nce.py``), and each
image's cluster. Buffers, so a checkpoint carries them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clusterclr import distributed
from clusterclr.clustering.kmeans import kmeans
from clusterclr.losses.proto_nce import concentration


class Prototypes(nn.Module):
    def __init__(self, num_images: int, dim: int, clusters: int) -> None:
        super().__init__()
        if not 2 <= clusters <= num_images:
            raise ValueError(f"clusters must be between 2 and the {num_images} images, got {clusters}")
        self.register_buffer("centroids", torch.zeros(clusters, dim))
        self.register_buffer("concentration", torch.ones(clusters))
        self.register_buffer("labels", torch.zeros(num_images, dtype=torch.long))

    @property
    def num_clusters(self) -> int:
        return len(self.centroids)

    @torch.no_grad()
    def fit(
        self,
        features: torch.Tensor,
        temperature: float,
        seed: int,
        iterations: int = 20,
        restarts: int = 1,
        alpha: float = 10.0,
        floor: float = 0.0,
    ) -> float:
        """Cluster ``features`` (N × D) afresh; returns the k-means inertia."""
        features = F.normalize(features.float(), dim=1)
        fitted = distributed.on_main_then_broadcast(
            kmeans, features.cpu(), self.num_clusters, seed=seed, niter=iterations, restarts=restarts
        )
        centroids = torch.from_numpy(fitted.centroids).to(features.device)
        labels = torch.from_numpy(fitted.assignments).to(features.device)
        self.concentration.copy_(concentration(features, centroids, labels, temperature, alpha, floor))
        self.centroids.copy_(F.normalize(centroids, dim=1))
        self.labels.copy_(labels)
        return fitted.inertia
