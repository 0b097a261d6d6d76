"""Scores of a clustering against ground-truth classes.

All three scores are computed from the contingency table ``n[i, j]`` (number
of samples of class ``i`` put in cluster ``j``), with row sums ``a_i``,
column sums ``b_j`` and ``N`` samples. NMI and ARI reproduce scikit-learn's
``normalized_mutual_info_score`` (arithmetic mean) and ``adjusted_rand_score``
including their conventions for degenerate labellings.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def contingency(labels_true: np.ndarray, labels_pred: np.ndarray) -> np.ndarray:
    """Count matrix ``n[i, j]`` of samples with the i-th class and j-th cluster.

    Rows and columns follow the sorted distinct label values, so labels need
    not be contiguous. Returns an int64 array of shape (classes, clusters).
    """
    labels_true, labels_pred = _check_labels(labels_true, labels_pred)
    classes, class_idx = np.unique(labels_true, return_inverse=True)
    clusters, cluster_idx = np.unique(labels_pred, return_inverse=True)
    flat = class_idx.ravel() * len(clusters) + cluster_idx.ravel()
    counts = np.bincount(flat, minlength=len(classes) * len(clusters))
    return counts.reshape(len(classes), len(clusters)).astype(np.int64)


def nmi(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Normalized mutual information, arithmetic-mean normalisation.

    ``MI = sum_ij n_ij/N * log(N n_ij / (a_i b_j))`` and
    ``NMI = MI / ((H(classes) + H(clusters)) / 2)`` with natural-log entropies
    ``H = -sum p log p``. Identical partitions score exactly 1.0 rather than
    1 up to rounding; as in scikit-learn this includes two constant
    labellings (0/0 otherwise), while a single constant labelling scores 0.0.
    """
    table = contingency(labels_true, labels_pred)
    occupied = table > 0
    if (occupied.sum(axis=0) == 1).all() and (occupied.sum(axis=1) == 1).all():
        return 1.0
    if min(table.shape) == 1:
        return 0.0
    total = table.sum()
    a = table.sum(axis=1)
    b = table.sum(axis=0)
    i, j = np.nonzero(table)
    n_ij = table[i, j].astype(np.float64)
    log_ratio = np.log(n_ij) + np.log(total) - np.log(a[i]) - np.log(b[j])
    mi = float(np.sum(n_ij / total * log_ratio))
    # Independent labellings give MI = 0 up to rounding, which may be negative.
    if mi <= 0.0:
        return 0.0
    normaliser = (_entropy(a) + _entropy(b)) / 2.0
    return mi / normaliser


def ari(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Adjusted Rand index (Hubert & Arabie, 1985) via pair counts.

    Over unordered pairs of samples: ``tp`` = same class and same cluster,
    ``fp`` = same cluster only, ``fn`` = same class only, ``tn`` = neither, with
    ``tp = sum_ij C(n_ij, 2)``, ``fp = sum_j C(b_j, 2) - tp``,
    ``fn = sum_i C(a_i, 2) - tp``. Then
    ``ARI = 2 (tp tn - fn fp) / ((tp + fn)(fn + tn) + (tp + fp)(fp + tn))``,
    which equals the usual (index - expected) / (max - expected) form.
    When no pair disagrees (``fp = fn = 0``, e.g. both labellings constant or
    both all-singletons) the score is 1.0, as in scikit-learn.
    """
    table = contingency(labels_true, labels_pred)
    total = int(table.sum())
    # Python ints: pair counts grow as N**2 and their products as N**4.
    tp = sum(_pairs(int(n)) for n in table[table > 0])
    same_class = sum(_pairs(int(n)) for n in table.sum(axis=1))
    same_cluster = sum(_pairs(int(n)) for n in table.sum(axis=0))
    fp = same_cluster - tp
    fn = same_class - tp
    tn = _pairs(total) - tp - fp - fn
    if fp == 0 and fn == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


def cluster_accuracy(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Accuracy under the best one-to-one map from clusters to classes.

    ``ACC = max_m sum_j n[m(j), j] / N`` over injective matchings ``m``
    between clusters and classes, solved exactly with the Hungarian algorithm
    on the contingency table. With more clusters than classes the unmatched
    clusters' samples count as errors; with fewer, the unmatched classes' do.
    """
    table = contingency(labels_true, labels_pred)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / table.sum())


def purity(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """Fraction of samples whose cluster's most common class is their own: ``sum_j max_i n[i, j] / N``.

    Any number of clusters; more clusters never lower it (singletons score 1.0),
    so read it next to the number of clusters.
    """
    table = contingency(labels_true, labels_pred)
    return float(table.max(axis=0).sum() / table.sum())


def majority_mapping(labels_true: np.ndarray, labels_pred: np.ndarray, clusters: int) -> np.ndarray:
    """Each of ``clusters`` cluster ids (0..clusters-1) mapped to its most common class.

    Many clusters may map to one class (over-clustering). A cluster with no
    samples maps to the most common class overall; ties go to the smaller class.
    """
    labels_true, labels_pred = _check_labels(labels_true, labels_pred)
    if labels_pred.min() < 0 or labels_pred.max() >= clusters:
        raise ValueError(f"cluster ids must lie in 0..{clusters - 1}")
    classes = int(labels_true.max()) + 1
    counts = np.zeros((clusters, classes), dtype=np.int64)
    np.add.at(counts, (labels_pred, labels_true), 1)
    mapping = counts.argmax(axis=1)
    mapping[counts.sum(axis=1) == 0] = np.bincount(labels_true).argmax()
    return mapping


def clustering_scores(labels_true: np.ndarray, labels_pred: np.ndarray) -> dict[str, float]:
    """NMI, ACC and ARI of one clustering, keyed ``"nmi"``, ``"acc"``, ``"ari"``."""
    return {
        "nmi": nmi(labels_true, labels_pred),
        "acc": cluster_accuracy(labels_true, labels_pred),
        "ari": ari(labels_true, labels_pred),
    }


def _check_labels(
    labels_true: np.ndarray, labels_pred: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    labels_true = np.asarray(labels_true)
    labels_pred = np.asarray(labels_pred)
    if labels_true.ndim != 1 or labels_pred.ndim != 1:
        raise ValueError(
            f"labels must be 1-D, got shapes {labels_true.shape} and {labels_pred.shape}"
        )
    if len(labels_true) != len(labels_pred):
        raise ValueError(
            f"labels differ in length: {len(labels_true)} true vs {len(labels_pred)} predicted"
        )
    if len(labels_true) == 0:
        raise ValueError("labels are empty")
    return labels_true, labels_pred


def _entropy(counts: np.ndarray) -> float:
    """Natural-log entropy of the distribution given by positive counts."""
    p = counts[counts > 0] / counts.sum()
    return float(-np.sum(p * np.log(p)))


def _pairs(n: int) -> int:
    """Number of unordered pairs among n items, C(n, 2)."""
    return n * (n - 1) // 2
