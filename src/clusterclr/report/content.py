"""What a report shows, gathered from a training run."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from clusterclr.build import Parts
from clusterclr.clustering.assignments import ClusterAssignments, save_centroids
from clusterclr.data.streamed import StreamedImages
from clusterclr.evaluate.clusters import cluster_assignments
from clusterclr.evaluate.context import EvalContext
from clusterclr.pathtext import path_text
from clusterclr.rundir import RunDir
from clusterclr.runlog import read_log
from clusterclr.stage.choose_k import KChoice

SPLIT_NAMES = {
    "test": "the test split",
    "holdout": "the held-out part of train",
    "train": "every training image (the data set has no labels to hold out)",
}


@dataclass
class ReportContent:
    title: str
    images_described: str  # which images the map, galleries and tables show
    images: torch.Tensor | StreamedImages  # uint8 N×C×H×W, the shown images (a streamed set decodes only those shown)
    features: torch.Tensor  # N×D backbone features of those images
    assignments: ClusterAssignments
    labels: np.ndarray | None = None  # (N,) class indices, when known
    class_names: Sequence[str] | None = None
    sources: Sequence[str] | None = None  # file paths, when the images came from files
    metrics: dict[str, Any] = field(default_factory=dict)  # shown as the metrics table
    log: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl records, for the curves
    settings: dict[str, Any] = field(default_factory=dict)  # method, data, model: shown in the header
    seed: int = 0
    choice: KChoice | None = None  # how K was chosen, when it was: its score curve is plotted


def run_settings(parts: Parts, epoch: int) -> dict[str, Any]:
    cfg = parts.config
    return {
        "method": cfg.method.name,
        "data set": parts.splits.name,
        "data root": path_text(cfg.data.root) if cfg.data.root else "",
        "backbone": cfg.model.describe(),
        "image size": "×".join(map(str, parts.method.data.image_size)),
        "epochs": f"{epoch} of {cfg.train.epochs}",
    }


def run_report_content(parts: Parts, run_dir: RunDir, epoch: int, ctx: EvalContext | None = None) -> ReportContent:
    """The report of a training run: k-means fitted on the kNN bank, the evaluation split shown.

    These are the images and the clustering its metrics.json scores (``ctx``:
    the evaluation's context, whose features and fit are reused); the k-means
    centroids are saved in the run for ``clusterclr assign``.
    """
    splits = parts.splits
    ctx = ctx or EvalContext.of(parts, progress=False)
    centroids, assignments = cluster_assignments(ctx)
    save_centroids(run_dir.centroids, centroids)
    metrics = json.loads(run_dir.metrics.read_text(encoding="utf-8")) if run_dir.metrics.is_file() else {}
    shown = ctx.test  # less any streamed file found unreadable while embedding it (data.skip_bad)
    return ReportContent(
        title=f"{parts.config.method.name} on {splits.name}",
        images_described=f"{len(shown)} images: {SPLIT_NAMES.get(splits.eval_split, splits.eval_split)}",
        images=shown.images,
        features=ctx.embeddings("test").features,
        assignments=assignments,
        labels=None if shown.labels is None else shown.labels.numpy(),
        class_names=shown.class_names,
        sources=shown.sources,
        metrics=metrics,
        log=read_log(run_dir.log),
        settings=run_settings(parts, epoch),
        seed=parts.config.seed,
        choice=ctx.choice,
    )
