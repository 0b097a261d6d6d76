r"""The number of clusters, chosen from the data: a score for every K in a range, and the best K.

Two criteria, both on the stage's prepared features (centred,
L2-normalised; see :mod:`clusterclr.stage.graph`):

``silhouette`` (the default): k-means for each K (scikit-learn's, k-means++
seeding and 3 restarts: random seeding, as faiss does it, misses planted
blobs), scored by the mean silhouette under cosine distance,
:math:`s(i) = (b_i - a_i) / \max(a_i, b_i)`, with :math:`a_i` the mean
distance of image :math:`i` to its own cluster and :math:`b_i` to the
nearest other one; the K with the highest mean wins. It asks the question
a user asks (are the clusters compact and apart?), it is what folder tools
such as clustimage report, so its curve reads the same, and it needs
nothing but the features. Its known bias is towards few clusters when
groups touch; the curve is returned so the choice can be seen. k-means
and the silhouette are computed on a seeded sample of at most
``max_points`` images (the silhouette costs N² distances). Measured (K in
2..20, 3 seeds): planted blobs, the planted K; scikit-learn's digits
(10 classes), 11–16 on raw pixels and 13–20 on SimCLR features, whose
curve rises to 0.55 at K = 10 and then stays flat within ±0.02 (digits
come in sub-styles); the CIFAR-10 subset's weak SimCLR features, 2, on a
curve falling from K = 2. Read the curve, not only the pick.

``eigengap``: the spectrum of the normalised Laplacian
:math:`L = I - D^{-1/2} W D^{-1/2}` of the symmetric kNN graph
(:math:`W_{ij} = 1` when either image is among the other's neighbours).
A graph made of K loosely joined parts has K eigenvalues near 0 and then a
jump; the score of K is the gap :math:`\lambda_{K+1} - \lambda_K` and the
largest gap wins. It reads the same neighbour graph SCAN and TEMI train on
and costs no k-means; on planted blobs its gap is unmistakable, but on
the real features above the gaps are all below 0.03 and the pick (18 on
digits features, 11 on pixels, 3 on CIFAR) is noise, which is why it is
not the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import eigsh
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from clusterclr.errors import UserError
from clusterclr.stage.graph import (
    NeighbourGraph,
    check_features,
    neighbour_graph,
    prepare,
)

CRITERIA = ("silhouette", "eigengap")
# Below this many images the Laplacian's spectrum is computed densely (exact, well under a second).
DENSE_SPECTRUM_UP_TO = 2000


@dataclass(frozen=True)
class KChoice:
    """``scores``: K → score (higher is better) for every K tried, in order; ``chosen``: the K with the best."""

    criterion: str
    scores: dict[int, float]
    chosen: int


def choose_k(
    features: torch.Tensor,
    k_min: int = 2,
    k_max: int = 20,
    criterion: Literal["silhouette", "eigengap"] = "silhouette",
    seed: int = 0,
    neighbours: int = 10,
    max_points: int = 5000,
    graph: NeighbourGraph | None = None,
) -> KChoice:
    """Score every K in [``k_min``, ``k_max``] on ``features`` (N × D) and pick the best; ties go to the smaller K.

    ``neighbours`` and ``graph`` (an already mined graph, used instead)
    serve the eigengap; ``max_points`` and ``seed`` the silhouette.
    """
    if criterion not in CRITERIA:
        raise UserError(f"K criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    check_features(features)
    check_range(k_min, k_max, len(features))
    ks = list(range(k_min, k_max + 1))
    if criterion == "silhouette":
        scores = silhouette_curve(features, ks, seed, max_points)
    else:
        scores = eigengap_curve(graph if graph is not None else neighbour_graph(features, min(neighbours, len(features) - 1)), ks)
    best = max(scores.values())
    return KChoice(criterion, scores, min(k for k, s in scores.items() if s == best))


def check_range(k_min: int, k_max: int, images: int) -> None:
    """UserError unless 2 <= k_min < k_max < number of images."""
    if k_min < 2:
        raise UserError(f"the smallest number of clusters to try must be at least 2, got {k_min}")
    if k_max <= k_min:
        raise UserError(f"choosing the number of clusters needs a range of at least two values, got {k_min}..{k_max}")
    if k_max >= images:
        raise UserError(f"cannot try {k_max} clusters on {images} images; the largest K must be below the number of images")


def silhouette_curve(features: torch.Tensor, ks: list[int], seed: int = 0, max_points: int = 5000) -> dict[int, float]:
    """Mean cosine silhouette of k-means with each K on the unit vectors, on a seeded sample of at most ``max_points`` images."""
    x = prepare(features)
    if len(x) > max_points:
        x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:max_points]]
    points = x.cpu().numpy()
    scores = {}
    for k in ks:
        if k >= len(points):
            raise UserError(f"cannot try {k} clusters on a sample of {len(points)} images; raise max_points or lower the largest K")
        labels = KMeans(k, n_init=3, random_state=seed).fit_predict(points)
        # One cluster left (all points equal) has no silhouette; it is the worst case, -1.
        scores[k] = float(silhouette_score(points, labels, metric="cosine")) if len(np.unique(labels)) > 1 else -1.0
    return scores


def eigengap_curve(graph: NeighbourGraph, ks: list[int]) -> dict[int, float]:
    """λ_{K+1} − λ_K of the symmetric kNN graph's normalised Laplacian, for each K."""
    eigenvalues = laplacian_spectrum(graph, max(ks) + 1)
    return {k: float(eigenvalues[k] - eigenvalues[k - 1]) for k in ks}


def laplacian_spectrum(graph: NeighbourGraph, count: int) -> np.ndarray:
    """The ``count`` smallest eigenvalues of I − D^-1/2 W D^-1/2, ascending, W the symmetrised kNN graph."""
    n, k = graph.indices.shape
    rows = np.repeat(np.arange(n), k)
    columns = graph.indices.cpu().numpy().reshape(-1)
    directed = sp.csr_matrix((np.ones(n * k), (rows, columns)), shape=(n, n))
    adjacency = ((directed + directed.T) > 0).astype(np.float64)
    inverse_root_degree = sp.diags(1 / np.sqrt(np.asarray(adjacency.sum(axis=1)).ravel()))
    normalised = inverse_root_degree @ adjacency @ inverse_root_degree
    if n <= DENSE_SPECTRUM_UP_TO:
        top = np.linalg.eigvalsh(normalised.toarray())[::-1][:count]
    else:
        # The largest eigenvalues of the normalised adjacency are the Laplacian's smallest (λ_L = 1 − λ_A);
        # Lanczos finds the largest quickly, and a fixed start vector makes it deterministic.
        start = np.random.default_rng(0).standard_normal(n)
        top = np.sort(eigsh(normalised, k=count, which="LA", v0=start, return_eigenvectors=False))[::-1]
    return np.clip(1 - top, 0.0, 2.0)
