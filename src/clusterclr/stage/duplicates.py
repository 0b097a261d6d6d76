"""Near-duplicate groups and atypical images, read off the neighbour graph, ranked for galleries and CSV files.

Both use the similarities of :mod:`clusterclr.stage.graph`: cosine on
centred, L2-normalised features, so 0 means "as unrelated as two images
of this data set can be expected to be" and 1 "the same direction".

**Near-duplicates.** An edge joins an image and a neighbour when their
similarity is at least ``threshold``; a group is a connected component of
these edges (duplicates of duplicates belong together, and a group larger
than k + 1 is still found through chains). The default, 0.98, comes from
the CIFAR-10 subset with the subset's SimCLR preset (40 epochs): copies
with light pixel noise (σ = 4/255) or 10% less brightness stay above 0.986
for 95% of images, a 1-pixel shift has median 0.987, a horizontal flip
0.970; the nearest *other* image sits above 0.95 for 9.5% of images and
above 0.98 for 1%. So 0.95 would group one image in ten with a look-alike,
and 0.98 finds re-encoded and retouched copies, not flips or crops. The
threshold depends on the encoder: features trained to ignore what tells
images apart put distinct ones closer (on scikit-learn's 8×8 digits the
nearest other image has median 0.984), so read the groups before
deleting anything.

**Atypicality.** 1 − the mean similarity of an image to its k neighbours:
an image far from everything, even its nearest images, is an outlier, a
corrupt file or a rare kind of picture.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components

from clusterclr.pathtext import path_text
from clusterclr.stage.graph import NeighbourGraph

DUPLICATE_THRESHOLD = 0.98


@dataclass(frozen=True)
class DuplicateGroup:
    """Images (rows, ascending) joined by near-duplicate edges; ``similarity`` of the group's closest pair."""

    images: tuple[int, ...]
    similarity: float


def near_duplicates(graph: NeighbourGraph, threshold: float = DUPLICATE_THRESHOLD) -> list[DuplicateGroup]:
    """Groups of two or more images linked by graph edges of similarity >= ``threshold``; largest and closest first."""
    n = graph.indices.shape[0]
    similar = graph.similarities.cpu().numpy() >= threshold
    anchors = np.nonzero(similar)[0]
    partners = graph.indices.cpu().numpy()[similar]
    edges = sp.coo_matrix((np.ones(len(anchors)), (anchors, partners)), shape=(n, n))
    _, component = connected_components(edges, directed=False)
    closest = np.full(n, -np.inf)
    np.maximum.at(closest, anchors, graph.similarities.cpu().numpy()[similar])
    grouped = np.flatnonzero(np.bincount(component)[component] > 1)  # most images are alone: skip them at once
    order = grouped[np.argsort(component[grouped], kind="stable")]
    groups = [
        DuplicateGroup(tuple(int(i) for i in members), float(closest[members].max()))
        for members in np.split(order, np.flatnonzero(np.diff(component[order])) + 1)
        if len(members)
    ]
    return sorted(groups, key=lambda g: (-len(g.images), -g.similarity, g.images[0]))


def atypicality(graph: NeighbourGraph) -> torch.Tensor:
    """(N,) 1 − each image's mean similarity to its neighbours: higher is more atypical."""
    return 1 - graph.similarities.double().mean(dim=1)


def most_atypical(graph: NeighbourGraph, count: int | None = None) -> list[tuple[int, float]]:
    """(image, atypicality) of the ``count`` (default: all) most atypical images, most atypical first; ties by row."""
    scores = atypicality(graph).cpu().numpy()
    order = np.lexsort((np.arange(len(scores)), -scores))[:count]
    return [(int(i), float(scores[i])) for i in order]


def duplicate_rows(groups: Sequence[DuplicateGroup], sources: Sequence[str] | None = None) -> list[dict[str, object]]:
    """One CSV row per image of each group: group (1 = first), size, image row, source, the group's similarity."""
    return [
        {"group": rank, "size": len(g.images), "image": i, "source": _source(sources, i), "similarity": round(g.similarity, 6)}
        for rank, g in enumerate(groups, start=1)
        for i in g.images
    ]


def atypical_rows(ranked: Sequence[tuple[int, float]], sources: Sequence[str] | None = None) -> list[dict[str, object]]:
    """One CSV row per image of :func:`most_atypical`: rank (1 = most atypical), image row, source, atypicality."""
    return [
        {"rank": rank, "image": i, "source": _source(sources, i), "atypicality": round(score, 6)}
        for rank, (i, score) in enumerate(ranked, start=1)
    ]


def _source(sources: Sequence[str] | None, image: int) -> str:
    """A row's file path as CSV text (``path_text``: any file name, one line)."""
    return "" if sources is None else path_text(sources[image])
