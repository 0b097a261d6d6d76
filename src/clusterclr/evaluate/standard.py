"""The standard evaluation of a run, logged during training and written to metrics.json at its end.

It runs the ``knn``, ``kmeans`` and ``head`` protocols at the run's own
settings (k = ``eval.knn_k``, K = the run's clusters, seed = the run's seed)
and reports their scores under the headline names below: ``knn_acc`` is the
knn protocol's ``k{k}_top1``, ``kmeans_nmi`` the kmeans protocol's
``k{K}_nmi``, and so on. Unlabelled data gets None for every score, and
still the k-means and head cluster sizes.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from clusterclr.build import Parts
from clusterclr.evaluate.context import EvalContext
from clusterclr.evaluate.protocols import head, kmeans, knn
from clusterclr.evaluate.protocols.options import ProtocolOptions

HEADLINE_KEYS = ("knn_acc", "kmeans_nmi", "kmeans_acc", "kmeans_ari", "head_nmi", "head_acc", "head_ari")
SCORES = ("nmi", "acc", "ari")


def evaluate_parts(parts: Parts, ctx: EvalContext | None = None) -> dict[str, float | int | None]:
    """Evaluate the method ``parts`` holds on its data (``ctx``: its evaluation context, if one is at hand)."""
    ctx = ctx or EvalContext.of(parts, progress=False)
    seed, k, clusters = parts.config.seed, parts.config.eval.knn_k, ctx.clusters
    options = ProtocolOptions(knn_k=(k,), clusters=(clusters,))
    result: dict[str, float | int | None] = {"knn_acc": None, "knn_top5": None}
    result.update({f"kmeans_{name}": None for name in SCORES})
    if ctx.labelled:
        scores = knn.run(ctx, options, seed)
        result.update(knn_acc=scores[f"k{k}_top1"], knn_top5=scores[f"k{k}_top5"])
        scores = kmeans.run(ctx, options, seed)
        result.update({f"kmeans_{name}": scores[f"k{clusters}_{name}"] for name in SCORES})
    fitted = ctx.kmeans(clusters, seed)
    result["kmeans_empty_clusters"] = int(clusters - len(np.unique(fitted.assignments)))
    probabilities = ctx.embeddings("test").cluster_probabilities
    if probabilities is not None:
        if ctx.labelled:
            scores = head.run(ctx, options, seed)
            result.update({f"head_{name}": scores[name] for name in SCORES})
        else:
            result.update({f"head_{name}": None for name in SCORES})
        result.update(head_cluster_sizes(ctx.embeddings("bank").cluster_probabilities))
    return result


def head_cluster_sizes(probabilities: torch.Tensor) -> dict[str, Any]:
    """How a cluster head spreads images over its clusters, with a warning when it has collapsed.

    Collapse (every image in a few clusters) is the failure users of
    clustering heads meet most; it shows here long before it shows in a loss.
    """
    clusters = probabilities.shape[1]
    sizes = probabilities.argmax(1).bincount(minlength=clusters)
    empty = int((sizes == 0).sum())
    largest = float(sizes.max()) / max(1, int(sizes.sum()))
    if empty or (clusters > 2 and largest > 0.5):
        warnings.warn(
            f"the cluster head is collapsing: {empty} of its {clusters} clusters are empty and the largest holds "
            f"{largest:.0%} of the images; lower optim.lr, raise the weight of the method's cluster-balancing term, "
            "or check that clusters (K) suits the data",
            stacklevel=2,
        )
    return {"head_cluster_sizes": sizes.tolist(), "head_empty_clusters": empty, "head_largest_cluster": round(largest, 4)}
