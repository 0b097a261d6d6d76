"""How good a training-time clustering is: its cluster sizes and, where labels exist, its NMI.

Methods that train on pseudo-labels log this every epoch, so a run shows
whether the clustering improves (NMI rising) or degenerates (a few giant
clusters, many tiny or empty ones). True labels are read here and nowhere
near a loss.
"""

from __future__ import annotations

from typing import Any

import torch

from clusterclr.clustering.metrics import nmi


def pseudo_label_report(labels: torch.Tensor, num_clusters: int, true_labels: torch.Tensor | None) -> dict[str, Any]:
    """Cluster-size summary and histogram of ``labels`` (N), plus ``pseudo_label_nmi`` against ``true_labels``.

    The histogram counts clusters by size in powers of two (keys "0", "1",
    "2-3", "4-7", ...), compact at any K.
    """
    labels = labels.cpu()
    sizes = torch.bincount(labels, minlength=num_clusters)
    histogram: dict[str, int] = {"0": int((sizes == 0).sum())}
    low = 1
    while low <= int(sizes.max()):
        high = 2 * low - 1
        histogram[str(low) if low == high else f"{low}-{high}"] = int(((sizes >= low) & (sizes <= high)).sum())
        low *= 2
    report: dict[str, Any] = {
        "clusters_empty": histogram["0"],
        "cluster_size_min": int(sizes.min()),
        "cluster_size_median": int(sizes.median()),
        "cluster_size_max": int(sizes.max()),
        "cluster_size_histogram": histogram,
    }
    if true_labels is not None:
        report["pseudo_label_nmi"] = nmi(true_labels.cpu().numpy(), labels.numpy())
    return report
