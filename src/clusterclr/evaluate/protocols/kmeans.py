"""k-means protocol: k-means on the train features, test images assigned to the nearest centroid.

For each K: NMI, ARI, ACC (one-to-one Hungarian matching), purity, and
``majority_acc``: each cluster mapped to the majority class of its *train*
images (many clusters may share a class: the over-clustering score for
K > classes), accuracy of that map on the test images. Stochastic through
the k-means initialisation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from clusterclr.clustering.kmeans import assign
from clusterclr.clustering.metrics import clustering_scores, majority_mapping, purity
from clusterclr.evaluate.context import EvalContext
from clusterclr.evaluate.protocols.options import ProtocolOptions

STOCHASTIC = True


def settings(ctx: EvalContext, options: ProtocolOptions) -> dict[str, Any]:
    cfg = ctx.model.config.eval
    return {"clusters": list(_ks(ctx, options)), "restarts": cfg.kmeans_restarts, "iterations": cfg.kmeans_iterations}


def run(ctx: EvalContext, options: ProtocolOptions, seed: int) -> dict[str, float]:
    ctx.require_labels()
    test = ctx.embeddings("test").features
    result = {}
    for k in _ks(ctx, options):
        fitted = ctx.kmeans(k, seed)
        predicted = assign(F.normalize(test.float(), dim=1).numpy(), fitted.centroids)
        scores = partition_scores(ctx.bank.labels, fitted.assignments, ctx.test.labels, predicted, k)
        result.update({f"k{k}_{name}": value for name, value in scores.items()})
    return result


def partition_scores(
    bank_labels: torch.Tensor, bank_clusters: np.ndarray, test_labels: torch.Tensor, test_clusters: np.ndarray, k: int
) -> dict[str, float]:
    """Scores of a K-way partition on the test images; the majority map is learnt on the bank's."""
    truth = test_labels.numpy()
    mapping = majority_mapping(bank_labels.numpy(), np.asarray(bank_clusters), k)
    return {
        **clustering_scores(truth, test_clusters),
        "purity": purity(truth, test_clusters),
        "majority_acc": float((mapping[test_clusters] == truth).mean()),
        "empty_clusters": float(k - len(np.unique(bank_clusters))),
    }


def _ks(ctx: EvalContext, options: ProtocolOptions) -> tuple[int, ...]:
    return options.clusters or (ctx.clusters,)
