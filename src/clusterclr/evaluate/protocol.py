"""The standard evaluation of a run: kNN, k-means on features, and the cluster head.

Features are L2-normalised. The labelled train split is the kNN bank and
the data k-means is fitted on; every score is reported on the test split
(or the held-out part of train, when the data set has no test split).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from clusterclr.build import Parts
from clusterclr.clustering.kmeans import KMeansResult, assign, kmeans
from clusterclr.config import EvalConfig
from clusterclr.evaluate.features import embed_dataset
from clusterclr.evaluate.knn import knn_accuracy
from clusterclr.evaluate.metrics import clustering_scores

HEADLINE_KEYS = ("knn_acc", "kmeans_nmi", "kmeans_acc", "kmeans_ari", "head_nmi", "head_acc", "head_ari")


def cluster_features(features: torch.Tensor, clusters: int, cfg: EvalConfig, seed: int) -> KMeansResult:
    """k-means on L2-normalised features, as every evaluation and export does it."""
    normalised = F.normalize(features.float(), dim=1).numpy()
    return kmeans(normalised, clusters, seed=seed, niter=cfg.kmeans_iterations, restarts=cfg.kmeans_restarts)


def evaluate_features(
    bank: torch.Tensor,
    bank_labels: torch.Tensor | None,
    test: torch.Tensor,
    test_labels: torch.Tensor | None,
    clusters: int,
    cfg: EvalConfig,
    seed: int = 0,
) -> dict[str, float | int | None]:
    """kNN accuracy and k-means NMI/ACC/ARI; None where labels are missing."""
    result: dict[str, float | int | None] = {"knn_acc": None, "knn_top5": None}
    if bank_labels is not None and test_labels is not None:
        knn = knn_accuracy(bank, bank_labels, test, test_labels, k=cfg.knn_k, temperature=cfg.knn_temperature)
        result.update(knn_acc=knn["top1"], knn_top5=knn["top5"])
    fitted = cluster_features(bank, clusters, cfg, seed)
    predicted = assign(F.normalize(test.float(), dim=1).numpy(), fitted.centroids)
    result.update(_scores("kmeans", test_labels, predicted))
    result["kmeans_empty_clusters"] = int(clusters - len(np.unique(fitted.assignments)))
    return result


def _scores(prefix: str, labels: torch.Tensor | None, predicted: np.ndarray) -> dict[str, float | None]:
    if labels is None:
        return {f"{prefix}_nmi": None, f"{prefix}_acc": None, f"{prefix}_ari": None}
    scores = clustering_scores(labels.numpy(), predicted)
    return {f"{prefix}_{name}": value for name, value in scores.items()}


def evaluate_parts(parts: Parts) -> dict[str, float | int | None]:
    """Evaluate the method ``parts`` holds on its data."""
    cfg, splits = parts.config, parts.splits
    common = dict(
        method=parts.method,
        views=parts.views,
        device=parts.device,
        batch_size=cfg.eval.batch_size,
        autocast_dtype=parts.autocast_dtype,
        channels_last=cfg.train.channels_last,
    )
    bank = embed_dataset(dataset=splits.bank, **common)
    test = embed_dataset(dataset=splits.test, **common)
    result = evaluate_features(
        bank.features, splits.bank.labels, test.features, splits.test.labels, parts.eval_clusters, cfg.eval, seed=cfg.seed
    )
    if test.cluster_probabilities is not None:
        result.update(_scores("head", splits.test.labels, test.cluster_probabilities.argmax(1).numpy()))
        result.update(head_cluster_sizes(bank.cluster_probabilities))
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
            "or check that method.clusters suits the data",
            stacklevel=2,
        )
    return {"head_cluster_sizes": sizes.tolist(), "head_empty_clusters": empty, "head_largest_cluster": round(largest, 4)}
