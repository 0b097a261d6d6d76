"""k-means on frozen features with faiss.

Minimises the inertia ``sum_n min_k ||x_n - c_k||^2`` by Lloyd iterations
from ``restarts`` random initialisations, keeping the best run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np
import torch


@dataclass
class KMeansResult:
    """Outcome of :func:`kmeans`.

    ``centroids`` (K, D) float32, ``assignments`` (N,) int64 index of each
    point's nearest centroid, ``inertia`` the sum of squared L2 distances from
    the points to their centroids.
    """

    centroids: np.ndarray
    assignments: np.ndarray
    inertia: float


def kmeans(
    features: np.ndarray | torch.Tensor,
    k: int,
    seed: int = 0,
    niter: int = 50,
    restarts: int = 3,
    spherical: bool = False,
) -> KMeansResult:
    """Cluster (N, D) features into ``k`` groups; deterministic for a fixed seed.

    ``spherical=True`` is cosine k-means: the features are L2-normalised and
    the centroids renormalised after every update, so nearest-by-L2 equals
    most-similar-by-cosine. The returned assignments and inertia then refer
    to the normalised features; pass normalised features to :func:`assign`.
    """
    x = _as_float32(features, "features")
    n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of points ({n}), got {k}")
    if spherical:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.finfo(np.float32).tiny)
    clusterer = faiss.Kmeans(
        d,
        k,
        niter=niter,
        nredo=restarts,
        seed=seed,
        spherical=spherical,
        verbose=False,
        # faiss silently trains on a random subset when N > K * max (default
        # 256): raise the cap so every point is used.
        max_points_per_centroid=math.ceil(n / k) + 1,
        # faiss prints a warning to stderr when N < K * min (default 39); small
        # evaluation sets are legitimate here.
        min_points_per_centroid=1,
    )
    clusterer.train(x)
    centroids = np.ascontiguousarray(clusterer.centroids, dtype=np.float32)
    distances, assignments = _nearest(x, centroids)
    return KMeansResult(centroids, assignments, float(distances.sum(dtype=np.float64)))


def assign(features: np.ndarray | torch.Tensor, centroids: np.ndarray) -> np.ndarray:
    """Index of each feature's nearest centroid, ``argmin_k ||x_n - c_k||^2``, as int64."""
    x = _as_float32(features, "features")
    c = _as_float32(centroids, "centroids")
    if c.shape[0] == 0:
        raise ValueError("no centroids")
    if x.shape[1] != c.shape[1]:
        raise ValueError(f"feature dim {x.shape[1]} differs from centroid dim {c.shape[1]}")
    return _nearest(x, c)[1]


def _nearest(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared L2 distance to, and index of, each row's nearest centroid."""
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(centroids)
    distances, ids = index.search(x, 1)
    return distances[:, 0], ids[:, 0].astype(np.int64)


def _as_float32(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """A C-contiguous float32 (rows, dim) array, as faiss requires."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (rows, dim), got shape {x.shape}")
    return x
