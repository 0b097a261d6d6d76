"""Embeddings mapped to 2-D for the report: UMAP where it is installed, else t-SNE, on a subsample."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# t-SNE's cost grows with N log N per iteration; 2,000 points keep the report within seconds.
MAP_POINTS = 2000


@dataclass(frozen=True)
class EmbeddingMap:
    rows: np.ndarray  # (M,) indices of the mapped images
    xy: np.ndarray  # (M, 2)
    how: str  # the algorithm, for the caption


def embedding_map(features: np.ndarray, seed: int, max_points: int = MAP_POINTS) -> EmbeddingMap | None:
    """2-D coordinates of up to ``max_points`` L2-normalised features (None below 3 images: nothing to map)."""
    n = len(features)
    if n < 3:
        return None
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n, max_points), replace=False))
    x = features[rows].astype(np.float64)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    try:
        import umap  # optional: faster and more faithful to global structure than t-SNE
    except ImportError:
        return EmbeddingMap(rows, _tsne(x, seed), "t-SNE")
    reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(x) - 1), random_state=seed)
    return EmbeddingMap(rows, reducer.fit_transform(x), "UMAP")


def _tsne(x: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    # PCA first (the usual t-SNE recipe): removes noise dimensions and speeds the neighbour search.
    components = min(50, x.shape[1], len(x))
    reduced = PCA(n_components=components, random_state=seed).fit_transform(x) if components < x.shape[1] else x
    # Perplexity must stay below the number of points; about a third of them is the usual cap for small sets.
    perplexity = float(min(30.0, max(1.0, (len(x) - 1) / 3)))
    # One thread: t-SNE's OpenMP threads spin-wait, and on a shared 2-core machine 1,017 points took
    # 17 s with two of them and 5 s with one.
    with threadpool_limits(1):
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(reduced)
