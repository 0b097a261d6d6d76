"""``clusterclr stage RUN_DIR``: a clustering stage on a trained run's frozen features, saved in the run.

The stage (``clusterclr.stage``) trains cluster heads so that each image
and its mined neighbours agree (SCAN, or TEMI), keeps the lowest-loss head
and saves it in the run (``RunDir.cluster_stage``); from then on the run's
model assigns clusters with it, as a method with its own cluster head
does: ``assign``, ``embed``, ``export``, the report and ``evaluate
--protocol head`` all use it. A stop (Ctrl-C, SIGTERM) saves the stage's
progress, and ``clusterclr stage --resume RUN_DIR`` continues it exactly.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import ValidationError

from clusterclr.build import Model, load_parts
from clusterclr.config import StageConfig
from clusterclr.configure import format_validation_error, validate
from clusterclr.data.base import ImageDataset
from clusterclr.errors import Interrupted, UserError
from clusterclr.evaluate.context import EvalContext
from clusterclr.evaluate.features import Embeddings, view_averaged_features
from clusterclr.evaluate.results import update_metrics
from clusterclr.layering import parse_override
from clusterclr.rundir import RunDir
from clusterclr.stage.choose_k import KChoice
from clusterclr.stage.graph import neighbour_graph
from clusterclr.stage.head import StageHead
from clusterclr.stage.store import read_stage, write_stage
from clusterclr.stage.trainer import ClusterStage
from clusterclr.training.guards import StopRequest
from clusterclr.training.run import TrainedRun, finish, start_run

END_TO_END_LR = 1e-4  # the paper's Adam rate for the backbone


@dataclass(frozen=True)
class StageResult:
    head: StageHead
    loss: str
    clusters: int
    choice: KChoice | None
    head_losses: list[float]
    kept_head: int
    # Where labels exist, the fraction of mined neighbours of an image's class: what the stage can build on.
    neighbour_precision: float | None = None

    def summary(self) -> dict[str, Any]:
        """What metrics.json records of the stage."""
        return {
            "loss": self.loss, "clusters": self.clusters, "kept_head": self.kept_head, "heads": len(self.head_losses),
            "neighbour_precision": self.neighbour_precision,
            "clusters_chosen_by": None if self.choice is None else self.choice.criterion,
        }


def fit_stage(
    model: Model, run_dir: RunDir, epoch: int, images: ImageDataset, features: torch.Tensor, settings: StageConfig,
    clusters: int, choice: KChoice | None = None, progress: bool = True, resume: bool = False,
) -> StageResult:
    """Fit the stage on ``features`` of the run's training ``images``, save it in the run, attach it to ``model``.

    ``resume``: continue the unfinished stage saved in the run (same settings and features) where it stopped.
    The images' labels, where they have them, only score the mined neighbours (never the loss).
    """
    if settings.neighbours >= len(features):
        warnings.warn(f"only {len(features)} images: the clustering stage mines {len(features) - 1} neighbours per image, "
                      f"not {settings.neighbours}", stacklevel=2)
        settings = settings.model_copy(update={"neighbours": len(features) - 1})
    graph = None
    if settings.mining_views:
        averaged = view_averaged_features(model, images, settings.mining_views, model.config.seed)
        graph = neighbour_graph(averaged, settings.neighbours)
    stage = ClusterStage(features, settings, clusters, seed=model.config.seed, graph=graph)
    if resume:
        stage.load_state_dict(unfinished_stage(run_dir)["progress"])
    precision = None
    if images.labels is not None:
        neighbours = stage.graph.indices.cpu()
        precision = float((images.labels[neighbours] == images.labels[:, None]).double().mean())
    base = {
        "settings": settings.model_dump(mode="json"), "clusters": clusters, "seed": model.config.seed, "epoch": epoch,
        "neighbour_precision": precision,
        "images": len(features), "choice": None if choice is None else {"criterion": choice.criterion, "scores": choice.scores,
                                                                        "chosen": choice.chosen},
    }
    stop = StopRequest()
    with stop.listening():
        done = stage.fit(progress=progress, should_stop=lambda: stop.signal is not None)
    if not done:
        write_stage(run_dir.cluster_stage, {**base, "progress": stage.state_dict(), "head": None})
        raise Interrupted(f"the clustering stage stopped; its progress is saved in {run_dir.cluster_stage}", stop.signal, run_dir.path)
    head = stage.head_module()
    result = stage.result()
    write_stage(run_dir.cluster_stage, {
        **base, "progress": stage.state_dict(), "head": head.saved(),
        "head_losses": result.head_losses.tolist(), "kept_head": result.kept_head,
    })
    model.cluster_stage = head.to(model.device)
    return StageResult(head, settings.loss, clusters, choice, result.head_losses.tolist(), result.kept_head, precision)


def saved_stage(record: dict[str, Any]) -> StageResult:
    """The finished stage saved in a run, as ``fit_stage`` returned it."""
    choice = None if record["choice"] is None else KChoice(**record["choice"])
    head = StageHead.from_saved(record["head"])
    return StageResult(head, record["settings"]["loss"], record["clusters"], choice, record["head_losses"], record["kept_head"],
                       record.get("neighbour_precision"))


def stage_run(
    run_dir: RunDir, clusters: int | str | None = None, overrides: dict[str, Any] | None = None, progress: bool = True,
    resume: bool = False,
) -> tuple[StageResult, dict[str, Any]]:
    """Fit a stage on the run in ``run_dir`` (its training images' features) and re-evaluate the run with it.

    ``clusters``: K', a number or "auto" (default: ``stage.clusters``, else the run's K); ``overrides``:
    ``stage.*`` settings over the run's own stage section (or the defaults); ``resume``: continue the saved
    unfinished stage with its own settings.
    """
    parts, epoch = load_parts(run_dir)
    parts.cluster_stage = None  # the stage is fitted on the features alone, whatever head the run had
    if resume:
        record = unfinished_stage(run_dir)
        settings, clusters = StageConfig(**record["settings"]), record["clusters"]
    else:
        base = parts.config.stage.model_dump(exclude={"neighbours"} if "loss" in (overrides or {}) else set()) if parts.config.stage else {}
        settings = stage_settings({**base, **(overrides or {})})
        clusters = clusters if clusters is not None else settings.clusters or parts.clusters
    train = parts.splits.train
    ctx = EvalContext(parts, parts.splits.name, train, train, "train", clusters, progress=False)
    choice = ctx.choice if not resume or record["choice"] is None else KChoice(**record["choice"])
    result = fit_stage(parts, run_dir, epoch, train, ctx.embeddings("bank").features, settings, ctx.clusters, choice, progress,
                       resume)
    metrics = finish(parts, run_dir, epoch)
    metrics["stage"] = result.summary()
    update_metrics(run_dir.metrics, {"stage": metrics["stage"]})
    return result, metrics


def end_to_end(
    run_dir: RunDir, out: RunDir, epochs: int, self_label_epochs: int = 0, clusters: int | None = None,
    overrides: dict[str, Any] | None = None,
) -> TrainedRun:
    """SCAN end to end: a new run in ``out`` whose backbone starts from ``run_dir``'s and is fine-tuned with cluster heads
    on neighbours mined in ``run_dir``'s features, for ``epochs``, then ``self_label_epochs`` of self-labelling.

    The paper's end-to-end recipe for the backbone: Adam at 1e-4 with weight decay 1e-4, no warm-up. The
    heads, neighbours, entropy weight and confidence come from the stage settings (``overrides``), and so
    does the heads' rate (``stage.lr``): fresh heads at 1e-4 barely move in the few hundred steps of a
    small data set (on digits, 150 steps: ACC 0.72 where the frozen stage reaches 0.95).
    """
    config, _, _ = run_dir.read()
    if config.clusters == "auto" and clusters is None:
        raise UserError("the end-to-end stage needs a number of clusters before it trains: give --clusters K")
    settings = stage_settings({**(config.stage.model_dump() if config.stage else {}), **(overrides or {})})
    tree = config.model_dump(mode="json", exclude={"method", "positives", "stage", "optim"})
    tree["clusters"] = clusters if clusters is not None else config.clusters
    tree["method"] = {
        "name": "scan", "heads": settings.heads, "head_clusters": settings.clusters, "hidden_dim": settings.hidden_dim,
        "entropy_weight": settings.entropy_weight, "confidence": settings.confidence,
        "cluster_epochs": epochs if self_label_epochs else None, "head_lr_scale": settings.lr / END_TO_END_LR,
    }
    tree["positives"] = {"encoder": str(run_dir.path), "neighbours": settings.neighbours}
    tree["optim"] = {"name": "adam", "lr": END_TO_END_LR, "weight_decay": 1e-4, "warmup_epochs": 0, "scale_lr_with_batch": False,
                     "batch_size": config.optim.batch_size}
    tree["train"]["epochs"] = epochs + self_label_epochs
    return start_run(validate(tree), out, init=run_dir)


def unfinished_stage(run_dir: RunDir) -> dict[str, Any]:
    record = read_stage(run_dir.cluster_stage)
    if record is None or record["head"] is not None:
        raise UserError(f"{run_dir} has no unfinished clustering stage to continue; start one with: clusterclr stage {run_dir}")
    return record


def with_stage_probabilities(embeddings: Embeddings, head: StageHead) -> Embeddings:
    """``embeddings`` with the stage head's cluster probabilities (the features are the stage's input)."""
    device = head.mean.device
    with torch.no_grad():
        probabilities = head(embeddings.features.to(device)).float().cpu()
    return Embeddings(embeddings.features, probabilities)


def stage_settings(values: dict[str, Any]) -> StageConfig:
    """``values`` validated as the ``stage`` section, errors naming the key."""
    try:
        return StageConfig.model_validate(values)
    except ValidationError as err:
        raise UserError(format_validation_error(err, prefix="stage.")) from None


def parse_stage_overrides(texts: list[str]) -> dict[str, Any]:
    """``["stage.loss=temi", ...]`` -> {"loss": "temi", ...}; only ``stage.*`` keys."""
    values = {}
    for text in texts:
        path, value = parse_override(text)
        if len(path) != 2 or path[0] != "stage":
            raise UserError(f"--set here takes stage settings (stage.KEY=VALUE), got {text}")
        values[path[1]] = value
    return values
