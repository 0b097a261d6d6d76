"""``clusterclr cluster``: learn from a folder of images (or fine-tune a trained run on it) and group its images.

The result is an ordinary run directory plus ``clusters.csv`` (every image
once: path, cluster, confidence), ``embeddings.npy`` (its rows in the CSV's
order), ``centroids.npy`` and a report with a gallery per cluster;
optionally the images are copied into one folder per cluster. The images
decoded for training and the trained model in memory are what is
clustered: nothing is read twice.

The default is SimCLR, then a SCAN clustering stage on its features
(``commands/stage.py``; ``--set stage=null`` clusters by k-means alone):
on real photos (the CIFAR-10 subset, at a CPU budget) SimCLR's features
clustered best of the methods measured there, and the centre predictor's
head collapsed there (BENCHMARKS.md); ``--method cc`` or
``center_predictor`` train a cluster head of their own instead. With
``--weights FILE`` (a pretrained backbone, ``model.weights``) the default
is no training of the backbone: the folder is clustered on the pretrained
features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clusterclr.clustering.assignments import (
    ClusterAssignments,
    assignments_csv,
    save_centroids,
)
from clusterclr.clustering.metrics import clustering_scores
from clusterclr.commands.copies import check_copy_target, copy_into_clusters, inside
from clusterclr.commands.stage import (
    StageResult,
    fit_stage,
    saved_stage,
    with_stage_probabilities,
)
from clusterclr.config import Config
from clusterclr.configure import build_config
from clusterclr.data.base import ImageDataset
from clusterclr.data.folder import DEFAULT_IMAGE_SIZE, folder_index, typical_side
from clusterclr.errors import OutputError, UserError
from clusterclr.evaluate.clusters import cluster_assignments
from clusterclr.evaluate.context import EvalContext
from clusterclr.io import atomic_write, write_text
from clusterclr.layering import layer, merge, read_yaml
from clusterclr.pathtext import path_text
from clusterclr.report.content import ReportContent
from clusterclr.report.write import write_report
from clusterclr.rundir import RunDir
from clusterclr.runlog import read_log
from clusterclr.stage.store import read_stage
from clusterclr.training.budget import check_budget
from clusterclr.training.run import TrainedRun, resume_run, start_run

DEFAULT_METHOD = "simclr"
# Training length from scratch: at least 100 epochs, and for small folders enough to see about 300,000 images
# (up to 300 epochs), so that a few thousand small images take about 10 minutes on 2 CPU cores. On 1,000
# CIFAR-10 images, 100 epochs are 300 steps and clustered them at NMI about 0.18, 300 epochs at about 0.22
# (3 seeds; BENCHMARKS.md, "clusterclr cluster"). CPUs differ by 4x and more in training speed (about 9
# minutes for those 300 epochs on one 2-core Intel Xeon, about 33 on a 2-core AVX2 AMD EPYC), so the
# default is also cut to what fits in DEFAULT_MINUTES on the machine it runs on (train.max_minutes).
MIN_EPOCHS, MAX_EPOCHS, IMAGES_SEEN = 100, 300, 300_000
DEFAULT_MINUTES = 10.0
DEFAULT_STAGE: dict[str, Any] = {"loss": "scan"}


@dataclass
class ClusterRequest:
    folder: Path
    clusters: int | str  # K, or "auto": chosen from the trained features
    out: RunDir
    method: str | None = None
    init: RunDir | None = None
    weights: Path | None = None  # a pretrained weights file: model.weights
    epochs: int | None = None
    copy_to: Path | None = None
    config_file: str | Path | None = None
    seed: int | None = None
    overrides: list[str] = field(default_factory=list)
    minutes: float | None = None  # a training budget in time instead of epochs
    resumed: bool = False  # finishing an interrupted run in ``out``


@dataclass(frozen=True)
class ClusterResult:
    config: Config
    paths: tuple[str, ...]
    assignments: ClusterAssignments
    features: np.ndarray  # N × D float32 backbone features, rows in ``paths`` order
    run: TrainedRun
    csv: Path
    report: Path


def check_request(request: ClusterRequest) -> int:
    """Refuse bad input before any work; returns the number of image files found."""
    folder = request.folder
    if not folder.exists():
        raise UserError(f"image folder not found: {path_text(folder)}")
    if not folder.is_dir():
        raise UserError(f"{path_text(folder)} is not a folder; give the folder that holds the images")
    if request.clusters != "auto" and request.clusters < 2:
        raise UserError(f"--clusters must be at least 2 (or auto), got {request.clusters}")
    found = len(folder_index(folder).files)  # counted from the (cached) index: no path objects for a million files
    if request.clusters != "auto" and request.clusters > found:
        raise UserError(f"--clusters {request.clusters} is more than the {found} images in {path_text(folder)}")
    check_budget(request.minutes, request.epochs)
    if request.init is not None and not request.init.path.is_dir():
        raise UserError(f"--init: run directory not found: {path_text(request.init.path)}")
    if request.weights is not None and not request.weights.is_file():
        raise UserError(f"--weights: no weights file at {path_text(request.weights)}")
    if request.init is not None and request.weights is not None:
        raise UserError("--init and --weights both give the backbone to start from; give one of them")
    if request.epochs is not None and request.epochs < 0:
        raise UserError(f"--epochs must be 0 or more, got {request.epochs}")
    if inside(request.out.path, folder):
        raise UserError(f"--out {path_text(request.out.path)} is inside the image folder {path_text(folder)}; choose a folder outside it")
    check_copy_target(request.copy_to, folder)
    return found


def cluster_config(request: ClusterRequest, images: int) -> Config:
    """The training config: practitioner defaults, under the user's --config, flags and --set.

    Defaults: SimCLR, ``default_epochs(images)`` cut to what fits in
    ``DEFAULT_MINUTES`` here (0 with pretrained weights: their features as
    they are), batch min(256, images / 2) so small folders still make
    several steps per epoch, a SCAN clustering stage on the trained
    features, no online evaluation (no labels to score), no end-of-training
    report (``cluster`` writes its own). Images are never upsampled:
    smaller than 64 px, they train at their own size (the folder's median
    shorter side, down to a multiple of 4), except for pretrained weights,
    whose resolution is the default (``weights.py``). With ``--init``, the
    model, image size and channels are the initial run's.
    """
    defaults: dict[str, Any] = {
        "method": {"name": DEFAULT_METHOD},
        "optim": {"batch_size": min(256, max(2, images // 2))},
        "train": {"eval_every": 0, "report": False},
        "stage": DEFAULT_STAGE,
    }
    if request.init is not None:
        initial, state, _ = request.init.read()
        height, width = state["data_info"]["image_size"]
        # The initial run's backbone comes from its checkpoint, not from the weights file it may have started from.
        defaults["model"] = initial.model.model_dump(mode="json", exclude={"weights"})
        defaults["data"] = {"channels": initial.data.channels}
        if height == width:
            defaults["data"]["image_size"] = height
    user = read_yaml(request.config_file) if request.config_file else {}
    flags = {
        "data.dataset": "folder",
        "data.root": str(request.folder),
        "method.name": request.method,
        "model.weights": None if request.weights is None else str(request.weights),
        "train.epochs": request.epochs,
        "clusters": request.clusters,
        "seed": request.seed,
    }
    tree = layer(merge(defaults, user), flags, request.overrides)
    model, train, data = (tree.setdefault(section, {}) for section in ("model", "train", "data"))
    weights = isinstance(model, dict) and model.get("weights")
    if isinstance(train, dict) and "epochs" not in train:
        train["epochs"] = 0 if weights else default_epochs(images)
        if not weights and request.minutes is None:
            train.setdefault("max_minutes", DEFAULT_MINUTES)
    if isinstance(data, dict) and "image_size" not in data and not weights:
        index = folder_index(request.folder)
        side = typical_side([index.path(i) for i in range(0, len(index.files), max(1, len(index.files) // 200))])
        if side is not None and side < DEFAULT_IMAGE_SIZE:
            data["image_size"] = max(8, side // 4 * 4)
    return build_config(tree)


def default_epochs(images: int) -> int:
    """Epochs that show the model about ``IMAGES_SEEN`` images, within [``MIN_EPOCHS``, ``MAX_EPOCHS``]."""
    return max(MIN_EPOCHS, min(MAX_EPOCHS, math.ceil(IMAGES_SEEN / max(images, 1))))


def cluster_folder(request: ClusterRequest) -> ClusterResult:
    found = check_request(request)
    config = cluster_config(request, found)
    return write_clusters(start_run(config, request.out, init=request.init, minutes=request.minutes), request)


def resume_cluster_folder(run_dir: RunDir, copy_to: Path | None = None) -> ClusterResult:
    """Finish a ``cluster`` run that stopped in training: continue it exactly, then write what ``cluster`` writes.

    On a run whose training is done this trains no further and writes its outputs again.
    """
    config, _, _ = run_dir.read()
    if config.data.dataset != "folder" or config.clusters is None:
        raise UserError(f"{run_dir} was not made by `clusterclr cluster`; continue it with: clusterclr train --resume {run_dir}")
    folder = Path(config.data.root)
    if not folder.is_dir():
        raise UserError(f"the run's image folder is gone: {path_text(folder)}")
    check_copy_target(copy_to, folder)
    trained = resume_run(run_dir)
    request = ClusterRequest(folder=folder, clusters=config.clusters, out=run_dir, copy_to=copy_to, resumed=True)
    return write_clusters(trained, request)


def write_clusters(trained: TrainedRun, request: ClusterRequest) -> ClusterResult:
    """Cluster every image of the folder with the trained model: CSV, embeddings, centroids, report, optional copies.

    Training is finished and checkpointed by now, and nothing here may lose
    it: any failure is an ``OutputError`` naming the output being written;
    ``cluster --resume`` on the finished run writes them all again.
    """
    parts, run_dir, config = trained.parts, trained.run_dir, trained.parts.config
    data = parts.splits.read  # every image of the folder, as training read it (a class tree holds some out of training)
    ctx = EvalContext(parts, "folder", data, data, "train", request.clusters, progress=False)
    stage = _cluster_stage(trained, request, ctx)
    data = ctx.test  # less any streamed file found unreadable on the way (data.skip_bad)
    paths = tuple(data.sources)
    writing: Path | str = "the clusters"
    try:
        centroids, assignments = cluster_assignments(ctx)
        features = ctx.embeddings("test").features.numpy().astype(np.float32)
        writing = run_dir.centroids
        save_centroids(run_dir.centroids, centroids)
        writing = run_dir.embeddings
        atomic_write(run_dir.embeddings, lambda f: np.save(f, features))
        writing = run_dir.clusters_csv
        csv = write_text(run_dir.clusters_csv, assignments_csv(paths, assignments))
        writing = run_dir.report
        report = write_report(run_dir, _report_content(trained, request, ctx, assignments, stage))
        if request.copy_to is not None:
            writing = request.copy_to
            copy_into_clusters(paths, assignments.cluster, Path(config.data.root), request.copy_to)
    except Exception as err:
        raise OutputError.of(err, writing, run_dir) from err
    return ClusterResult(config, paths, assignments, features, trained, csv, report)


def _cluster_stage(trained: TrainedRun, request: ClusterRequest, ctx: EvalContext) -> StageResult | None:
    """The run's clustering stage on the features of every image, its head giving ``ctx``'s cluster probabilities.

    A run finished before keeps the stage it has; one stopped inside the stage continues it.
    """
    config, run_dir = trained.parts.config, trained.run_dir
    if config.stage is None:
        return None
    record = read_stage(run_dir.cluster_stage) if request.resumed else None
    embeddings = ctx.embeddings("bank")
    if record is not None and record["head"] is not None and record["epoch"] == trained.epoch:
        stage = saved_stage(record)
        trained.parts.cluster_stage = stage.head.to(trained.parts.device)
    else:
        stage = fit_stage(
            trained.parts, run_dir, trained.epoch, ctx.bank, embeddings.features, config.stage,
            config.stage.clusters or ctx.clusters, ctx.choice, config.train.progress,
            resume=record is not None and record["head"] is None,
        )
    ctx.set_embeddings("bank", with_stage_probabilities(embeddings, stage.head))
    return stage


def _report_content(
    trained: TrainedRun, request: ClusterRequest, ctx: EvalContext, assignments: ClusterAssignments, stage: StageResult | None
) -> ReportContent:
    parts, run_dir, config = trained.parts, trained.run_dir, trained.parts.config
    data = ctx.test  # the images clustered
    folder = path_text(request.folder)
    if config.model.weights is not None:
        initial_weights = f"{path_text(config.model.weights)} ({config.model.weights_format})"
    elif request.resumed:
        initial_weights = "not recorded (resumed run)"  # --init is not part of the saved config
    else:
        initial_weights = path_text(request.init.path) if request.init else "none (trained from scratch)"
    return ReportContent(
        title=f"{assignments.clusters} clusters of {folder}" + ("" if ctx.choice is None else f" (K chosen by {ctx.choice.criterion})"),
        images_described=f"all {len(data)} images in {folder}",
        images=data.images,
        features=ctx.embeddings("test").features,
        assignments=assignments,
        labels=None if data.labels is None else data.labels.numpy(),
        class_names=data.class_names,
        sources=data.sources,
        metrics=_metrics(data, assignments, run_dir, stage),
        log=read_log(run_dir.log),
        settings={
            "folder": folder,
            "method": config.method.name,
            "initial weights": initial_weights,
            "backbone": config.model.describe(),
            "image size": "×".join(map(str, parts.method.data.image_size)),
            "epochs": trained.epoch,
        },
        seed=config.seed,
        choice=ctx.choice,
    )


def _metrics(data: ImageDataset, assignments: ClusterAssignments, run_dir: RunDir, stage: StageResult | None) -> dict[str, Any]:
    sizes = assignments.sizes()
    metrics: dict[str, Any] = {
        "images": len(data),
        "clusters": assignments.clusters,
        "assigned_by": assignments.by + (f" (clustering stage, {stage.loss})" if stage is not None else ""),
        **({} if stage is None or stage.neighbour_precision is None else {"neighbour_precision": stage.neighbour_precision}),
        "empty_clusters": int((sizes == 0).sum()),
        "largest_cluster": int(sizes.max()),
        "smallest_cluster": int(sizes.min()),
        "mean_confidence": float(assignments.confidence.mean()),
    }
    if data.labels is not None:
        scores = clustering_scores(data.labels.numpy(), assignments.cluster)
        metrics.update({f"{name}_vs_subfolders": value for name, value in scores.items()})
    epochs = [r for r in read_log(run_dir.log) if r.get("kind") == "epoch"]
    if epochs:
        metrics.update(final_loss=epochs[-1]["loss"], training_seconds=round(sum(r["seconds"] for r in epochs), 1))
    return metrics
