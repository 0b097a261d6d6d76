"""The report's figures, drawn with matplotlib (Agg, no display) and returned as PNG bytes.

Figures are built on ``matplotlib.figure.Figure`` directly rather than
pyplot, so nothing global (backends, open figures) changes in the caller.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from scipy.optimize import linear_sum_assignment

# Logged per step but not losses: drawn elsewhere or on another scale.
NOT_LOSSES = frozenset({"epoch", "lr", "output_std", "clusters_used", "positive_precision"})
# Bookkeeping in every record, and an epoch record's speed: never curves.
EPOCH_STATISTICS = frozenset({"step", "time", "seconds", "images_per_second"})
EVAL_CURVES = ("knn_acc", "kmeans_nmi", "kmeans_acc", "kmeans_ari", "head_nmi", "head_acc", "head_ari")
# Method diagnostics (the "method" log lines) drawn as scores in [0, 1]: the label agreement
# of mined pairs and cluster-mate positives, and the pseudo-labels' NMI against the classes.
DIAGNOSTIC_SCORES = ("precision", "nmi")
# Beyond this many clusters or classes, legends and per-cell numbers stop being readable.
MAX_LABELLED = 20


def _plain(name: object) -> str:
    """A name as literal text: matplotlib would read "$...$" in it as maths (and fail on bad maths)."""
    return str(name).replace("$", r"\$")


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def training_curves(log: Sequence[dict[str, Any]]) -> bytes | None:
    """Loss terms by step and the online evaluation scores by epoch; None when nothing was logged."""
    # Per-step lines when there are any (train.log_every), else the epochs' mean losses.
    steps = [r for r in log if r.get("kind") == "step"] or [r for r in log if r.get("kind") == "epoch"]
    evals = [r for r in log if r.get("kind") == "eval" and _numeric(r.get("epoch"))]
    losses = sorted({k for r in steps for k, v in r.items() if _numeric(v) and k not in NOT_LOSSES | EPOCH_STATISTICS})
    scores = [k for k in EVAL_CURVES if any(_numeric(r.get(k)) for r in evals)]
    if not losses and not scores:
        return None
    panels = [p for p, wanted in (("losses", losses), ("scores", scores)) if wanted]
    figure = Figure(figsize=(6 * len(panels), 3.6))
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        if panel == "losses":
            for key in losses:
                points = [(r["step"], r[key]) for r in steps if _numeric(r.get(key))]
                ax.plot(*zip(*points), label=key, linewidth=1.2, marker="o" if len(points) < 20 else None)
            ax.set(xlabel="step", ylabel="value", title="training losses")
        else:
            for key in scores:
                points = [(r["epoch"], r[key]) for r in evals if _numeric(r.get(key))]
                ax.plot(*zip(*points), marker="o", label=key, linewidth=1.2)
            ax.set(xlabel="epoch", ylabel="score", title="online evaluation", ylim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _png(figure)


def method_diagnostics(log: Sequence[dict[str, Any]]) -> bytes | None:
    """What a method logs about its positives and clusters over training (SePP pair precision,
    InterCLR/PCL pseudo-label NMI, empty clusters), by epoch; None for methods that log none."""
    records = [r for r in log if r.get("kind") == "method" and _numeric(r.get("epoch"))]
    keys = sorted({k for r in records for k, v in r.items() if _numeric(v)})
    scores = [k for k in keys if any(word in k for word in DIAGNOSTIC_SCORES)]
    empty = [k for k in keys if k.endswith("clusters_empty")]
    panels = [(name, wanted) for name, wanted in (("scores", scores), ("empty", empty)) if wanted]
    if not panels:
        return None
    figure = Figure(figsize=(6 * len(panels), 3.6))
    for ax, (panel, wanted) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        for key in wanted:
            points = [(r["epoch"], r[key]) for r in records if _numeric(r.get(key))]
            ax.plot(*zip(*points), marker="o", label=_plain(key), linewidth=1.2)
        if panel == "scores":
            ax.set(xlabel="epoch", ylabel="score", title="positives and pseudo-labels vs. classes", ylim=(0, 1))
        else:
            ax.set(xlabel="epoch", ylabel="clusters", title="empty clusters")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _png(figure)


def _colours(count: int) -> np.ndarray:
    """``count`` distinguishable RGBA colours (tab10/tab20 while they last, then evenly spaced hues)."""
    from matplotlib import colormaps

    if count <= 10:
        return colormaps["tab10"](np.arange(count))
    if count <= 20:
        return colormaps["tab20"](np.arange(count))
    return colormaps["hsv"](np.linspace(0, 1, count, endpoint=False))


def scatter_map(xy: np.ndarray, groups: np.ndarray, names: Sequence[str], title: str) -> bytes:
    """The 2-D map, one colour per group (cluster or class), with a legend when there are few groups."""
    figure = Figure(figsize=(5.0, 4.2))
    ax = figure.subplots()
    colours = _colours(len(names))
    size = 12 if len(xy) < 1000 else 5
    for g, name in enumerate(names):
        mask = groups == g
        if mask.any():
            ax.scatter(xy[mask, 0], xy[mask, 1], s=size, color=colours[g], label=_plain(name), linewidths=0)
    ax.set(title=title, xticks=[], yticks=[])
    if len(names) <= MAX_LABELLED:
        ax.legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return _png(figure)


@dataclass(frozen=True)
class MatchedTable:
    """Class × cluster counts, columns reordered: each class's matched cluster in class order, then the rest.

    With at least as many clusters as classes, the matched pairs are the diagonal.
    """

    counts: np.ndarray  # (classes, clusters) int64
    cluster_order: np.ndarray  # the cluster of each column
    matched: int  # images in matched (class, cluster) pairs: ACC × N


def matched_table(labels: np.ndarray, clusters: np.ndarray, num_classes: int, num_clusters: int) -> MatchedTable:
    """Hungarian matching of clusters to classes (as ACC does); unmatched clusters follow, largest first."""
    counts = np.zeros((num_classes, num_clusters), dtype=np.int64)
    np.add.at(counts, (labels, clusters), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    by_class = dict(zip(rows.tolist(), cols.tolist()))
    matched_columns = [by_class[r] for r in range(num_classes) if r in by_class]
    rest = sorted(set(range(num_clusters)) - set(matched_columns), key=lambda c: -counts[:, c].sum())
    order = np.array(matched_columns + rest, dtype=np.int64)
    return MatchedTable(counts[:, order], order, int(counts[rows, cols].sum()))


def confusion_matrix(table: MatchedTable, class_names: Sequence[str]) -> bytes:
    """Classes × clusters heat map, clusters in matched order, with the counts written in when they fit."""
    counts = table.counts
    classes, clusters = counts.shape
    figure = Figure(figsize=(max(4.5, 0.45 * clusters + 2.5), max(3.5, 0.4 * classes + 1.5)))
    ax = figure.subplots()
    image = ax.imshow(counts, cmap="Blues", aspect="auto")
    figure.colorbar(image, ax=ax, fraction=0.04, label="images")
    accuracy = table.matched / max(1, int(counts.sum()))
    ax.set(xlabel="cluster (matched order)", ylabel="class", title=f"classes vs clusters (Hungarian ACC {accuracy:.3f})")
    if classes <= MAX_LABELLED:
        ax.set_yticks(range(classes), [_plain(name) for name in class_names], fontsize=8)
    if clusters <= 2 * MAX_LABELLED:
        ax.set_xticks(range(clusters), [str(c) for c in table.cluster_order], fontsize=8)
    if classes <= MAX_LABELLED and clusters <= MAX_LABELLED:
        threshold = counts.max() / 2
        for (i, j), n in np.ndenumerate(counts):
            if n:
                ax.text(j, i, str(n), ha="center", va="center", fontsize=7, color="white" if n > threshold else "black")
    return _png(figure)


def cluster_sizes(sizes: np.ndarray) -> bytes:
    """Images per cluster, in cluster order, with the even share marked."""
    figure = Figure(figsize=(max(5.0, 0.3 * len(sizes) + 2), 3.2))
    ax = figure.subplots()
    ax.bar(range(len(sizes)), sizes, color="#4c72b0")
    ax.axhline(sizes.sum() / len(sizes), color="grey", linestyle="--", linewidth=1, label="even share")
    ax.set(xlabel="cluster", ylabel="images", title=f"cluster sizes ({int((sizes == 0).sum())} empty of {len(sizes)})")
    if len(sizes) <= 2 * MAX_LABELLED:
        ax.set_xticks(range(len(sizes)))
    ax.legend(fontsize=8)
    return _png(figure)


def k_curve(scores: dict[int, float], chosen: int, criterion: str) -> bytes:
    """The score of each K tried when the number of clusters was chosen, the chosen K marked."""
    ks = sorted(scores)
    figure = Figure(figsize=(5.0, 3.2))
    ax = figure.subplots()
    ax.plot(ks, [scores[k] for k in ks], marker="o", color="#4c72b0")
    ax.axvline(chosen, color="#c44e52", linestyle="--", linewidth=1, label=f"chosen: K = {chosen}")
    ax.set(xlabel="K (clusters)", ylabel=criterion, title=f"choosing K by {criterion} (higher is better)")
    ax.legend(fontsize=8)
    return _png(figure)
