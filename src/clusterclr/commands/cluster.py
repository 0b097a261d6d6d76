"""``clusterclr cluster``: learn from a folder of images (or fine-tune a trained run on it) and group its images.

The result is an ordinary run directory plus ``clusters.csv`` (every image
once: path, cluster, confidence), ``embeddings.npy`` (its rows in the CSV's
order), ``centroids.npy`` and a report with a gallery per cluster;
optionally the images are copied into one folder per cluster. The images
decoded for training and the trained model in memory are what is
clustered: nothing is read twice.

The default method is SimCLR with k-means on its features: on real photos
(the CIFAR-10 subset, at a CPU budget) its k-means clusters scored best of
the methods measured there, and the centre predictor's head collapsed there
(BENCHMARKS.md); ``--method cc`` or ``center_predictor`` assign by a head.
With ``--weights FILE`` (a pretrained backbone, ``model.weights``) the
default is no training: the folder is clustered on the pretrained features.
"""

from __future__ import annotations

import shutil
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
from clusterclr.commands.stage import StageResult, fit_stage, with_stage_probabilities
from clusterclr.config import Config
from clusterclr.configure import build_config
from clusterclr.data.base import ImageDataset
from clusterclr.data.folder import DEFAULT_IMAGE_SIZE, image_paths, typical_side
from clusterclr.errors import UserError
from clusterclr.evaluate.clusters import cluster_assignments
from clusterclr.evaluate.context import EvalContext
from clusterclr.io import atomic_write, write_text
from clusterclr.layering import layer, merge, read_yaml
from clusterclr.progress import progress_bar
from clusterclr.report.content import ReportContent
from clusterclr.report.write import write_report
from clusterclr.rundir import RunDir
from clusterclr.runlog import read_log
from clusterclr.stage.store import read_stage
from clusterclr.training.run import TrainedRun, resume_run, start_run

DEFAULT_METHOD = "simclr"
DEFAULT_EPOCHS = 100
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


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def check_request(request: ClusterRequest) -> int:
    """Refuse bad input before any work; returns the number of image files found."""
    folder = request.folder
    if not folder.exists():
        raise UserError(f"image folder not found: {folder}")
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder; give the folder that holds the images")
    if request.clusters != "auto" and request.clusters < 2:
        raise UserError(f"--clusters must be at least 2 (or auto), got {request.clusters}")
    found = len(image_paths(folder))
    if request.clusters != "auto" and request.clusters > found:
        raise UserError(f"--clusters {request.clusters} is more than the {found} images in {folder}")
    if request.minutes is not None and (request.epochs is not None or not request.minutes > 0):
        raise UserError("--minutes sets the training budget instead of --epochs: give one of them, and a positive number")
    if request.init is not None and not request.init.path.is_dir():
        raise UserError(f"--init: run directory not found: {request.init}")
    if request.weights is not None and not request.weights.is_file():
        raise UserError(f"--weights: no weights file at {request.weights}")
    if request.init is not None and request.weights is not None:
        raise UserError("--init and --weights both give the backbone to start from; give one of them")
    if request.epochs is not None and request.epochs < 0:
        raise UserError(f"--epochs must be 0 or more, got {request.epochs}")
    if _inside(request.out.path, folder):
        raise UserError(f"--out {request.out} is inside the image folder {folder}; choose a folder outside it")
    _check_copy_target(request.copy_to, folder)
    return found


def _check_copy_target(target: Path | None, folder: Path) -> None:
    if target is None:
        return
    if _inside(target, folder):
        raise UserError(f"--copy-to {target} is inside the image folder {folder}; choose a folder outside it")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UserError(f"--copy-to {target} already exists and is not an empty folder; choose a new or empty one")


def cluster_config(request: ClusterRequest, images: int) -> Config:
    """The training config: practitioner defaults, under the user's --config, flags and --set.

    Defaults: SimCLR, 100 epochs (0 with pretrained weights: their features
    as they are), batch min(256, images / 2) so small folders still make
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
        train["epochs"] = 0 if weights else DEFAULT_EPOCHS
    side = typical_side(image_paths(request.folder))
    if isinstance(data, dict) and "image_size" not in data and not weights and side is not None and side < DEFAULT_IMAGE_SIZE:
        data["image_size"] = max(8, side // 4 * 4)
    return build_config(tree)


def copy_into_clusters(paths: tuple[str, ...], clusters: np.ndarray, folder: Path, target: Path) -> None:
    """Copy each image to ``target/cluster_NN/``; originals are only read.

    Files from subfolders keep their relative path in the name (``a__b.png``),
    so two files of the same name never overwrite each other.
    """
    digits = len(str(int(clusters.max(initial=0))))
    for path, cluster in progress_bar(list(zip(paths, clusters)), desc="copying", unit="image"):
        relative = Path(path).resolve().relative_to(folder.resolve())
        destination = target / f"cluster_{int(cluster):0{digits}d}" / "__".join(relative.parts)
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copy2(path, destination)
        except OSError as err:
            raise UserError(f"cannot copy {path} to {destination}: {err.strerror or err}") from None


def cluster_folder(request: ClusterRequest) -> ClusterResult:
    found = check_request(request)
    config = cluster_config(request, found)
    return write_clusters(start_run(config, request.out, init=request.init, minutes=request.minutes), request)


def resume_cluster_folder(run_dir: RunDir, copy_to: Path | None = None) -> ClusterResult:
    """Finish a ``cluster`` run that stopped in training: continue it exactly, then write what ``cluster`` writes."""
    config, _, _ = run_dir.read()
    if config.data.dataset != "folder" or config.clusters is None:
        raise UserError(f"{run_dir} was not made by `clusterclr cluster`; continue it with: clusterclr train --resume {run_dir}")
    folder = Path(config.data.root)
    if not folder.is_dir():
        raise UserError(f"the run's image folder is gone: {folder}")
    _check_copy_target(copy_to, folder)
    trained = resume_run(run_dir)
    request = ClusterRequest(folder=folder, clusters=config.clusters, out=run_dir, copy_to=copy_to, resumed=True)
    return write_clusters(trained, request)


def write_clusters(trained: TrainedRun, request: ClusterRequest) -> ClusterResult:
    """Cluster every image of the folder with the trained model: CSV, embeddings, centroids, report, optional copies."""
    parts, run_dir, config = trained.parts, trained.run_dir, trained.parts.config
    data = parts.splits.read  # every image of the folder, as training read it (a class tree holds some out of training)
    ctx = EvalContext(parts, "folder", data, data, "train", request.clusters, progress=False)
    stage = None
    if config.stage is not None:
        record = read_stage(run_dir.cluster_stage)
        resume = request.resumed and record is not None and record["head"] is None
        embeddings = ctx.embeddings("bank")
        stage = fit_stage(parts, run_dir, trained.epoch, embeddings.features, config.stage, config.stage.clusters or ctx.clusters,
                          ctx.choice, config.train.progress, resume)
        ctx.set_embeddings("bank", with_stage_probabilities(embeddings, stage.head))
    centroids, assignments = cluster_assignments(ctx)
    save_centroids(run_dir.centroids, centroids)
    paths = data.sources
    features = ctx.embeddings("test").features.numpy().astype(np.float32)
    atomic_write(run_dir.embeddings, lambda f: np.save(f, features))
    csv = write_text(run_dir.clusters_csv, assignments_csv(paths, assignments))
    if config.model.weights is not None:
        initial_weights = f"{config.model.weights} ({config.model.weights_format})"
    elif request.resumed:
        initial_weights = "not recorded (resumed run)"  # --init is not part of the saved config
    else:
        initial_weights = str(request.init) if request.init else "none (trained from scratch)"
    content = ReportContent(
        title=f"{assignments.clusters} clusters of {request.folder}"
        + ("" if ctx.choice is None else f" (K chosen by {ctx.choice.criterion})"),
        images_described=f"all {len(data)} images in {request.folder}",
        images=data.images,
        features=ctx.embeddings("test").features,
        assignments=assignments,
        labels=None if data.labels is None else data.labels.numpy(),
        class_names=data.class_names,
        sources=paths,
        metrics=_metrics(data, assignments, run_dir, stage),
        log=read_log(run_dir.log),
        settings={
            "folder": str(request.folder),
            "method": config.method.name,
            "initial weights": initial_weights,
            "backbone": config.model.describe(),
            "image size": "×".join(map(str, parts.method.data.image_size)),
            "epochs": trained.epoch,
        },
        seed=config.seed,
        choice=ctx.choice,
    )
    report = write_report(run_dir, content)
    if request.copy_to is not None:
        copy_into_clusters(paths, assignments.cluster, Path(config.data.root), request.copy_to)
    return ClusterResult(config, paths, assignments, features, trained, csv, report)


def _metrics(data: ImageDataset, assignments: ClusterAssignments, run_dir: RunDir, stage: StageResult | None) -> dict[str, Any]:
    sizes = assignments.sizes()
    metrics: dict[str, Any] = {
        "images": len(data),
        "clusters": assignments.clusters,
        "assigned_by": assignments.by + (f" (clustering stage, {stage.loss})" if stage is not None else ""),
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
