"""The Python API: what the command line does, as calls that return objects.

```python
import clusterclr

run = clusterclr.train("configs/cifar10_subset_simclr.yaml", overrides={"train.epochs": 5})
run.metrics["knn_acc"]
embeddings = run.embed("photos/")            # features (and cluster probabilities) of image files
found = run.assign(["a.jpg", "b.jpg"])       # their clusters

result = clusterclr.cluster("photos/", clusters=8)
result.paths, result.cluster, result.confidence, result.features
```

Every function accepts what its command does: config files or trees and
``key=value`` overrides (or a mapping of dotted keys), run directories as
paths. Bad input raises ``clusterclr.errors.UserError`` with the message
the command line prints.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clusterclr import distributed
from clusterclr.build import Model, load_model, load_parts
from clusterclr.clustering.assignments import ClusterAssignments, assignments_csv
from clusterclr.commands.assign import assign_images, collect_images, embed_files
from clusterclr.commands.cluster import (
    ClusterRequest,
    ClusterResult,
    cluster_folder,
    resume_cluster_folder,
)
from clusterclr.commands.prepare import prepare as prepare_shards
from clusterclr.commands.stage import end_to_end, stage_run
from clusterclr.config import Config
from clusterclr.configure import build_config
from clusterclr.data.base import BadFile, ImageDataset
from clusterclr.data.splits import resize
from clusterclr.errors import UserError
from clusterclr.evaluate.features import Embeddings, embed
from clusterclr.evaluate.protocols import PROTOCOLS, evaluate_protocols
from clusterclr.evaluate.protocols.options import ProtocolOptions
from clusterclr.export import export_model
from clusterclr.rundir import RunDir
from clusterclr.stage.store import read_stage
from clusterclr.training.run import TrainedRun, finish, resume_run, start_run

PathLike = str | os.PathLike[str]
Images = PathLike | Sequence[PathLike] | torch.Tensor | np.ndarray


def make_config(
    config: Config | PathLike | Mapping[str, Any] | None = None, overrides: Sequence[str] | Mapping[str, Any] = ()
) -> Config:
    """A validated ``Config``: a YAML file or a tree of sections (or the defaults), then ``overrides``
    as ``["optim.lr=0.1", ...]`` or ``{"optim.lr": 0.1, ...}``."""
    if isinstance(config, Config):
        if not overrides:
            return config
        config = config.model_dump(mode="json")
    flags, texts = (dict(overrides), []) if isinstance(overrides, Mapping) else ({}, list(overrides))
    tree = dict(config) if isinstance(config, Mapping) else config
    return build_config(tree, flags, texts)


def train(
    config: Config | PathLike | Mapping[str, Any] | None = None,
    *,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    out: PathLike | None = None,
    init: PathLike | None = None,
    minutes: float | None = None,
) -> Run:
    """Train a new run (in ``out``, default ``runs/METHOD-DATASET-TIME``), evaluate it, and return it.

    ``init``: a trained run whose backbone the new run starts from.
    ``minutes``: train for as many epochs as fit in that time on this
    machine (measured first; the run's config records the epochs it became)
    instead of ``train.epochs``. Under ``torchrun`` every process calls
    this; rank 0's run holds the metrics.
    """
    config = make_config(config, overrides)
    with distributed.process_group():
        run_dir = RunDir(out) if out is not None else distributed.on_main_then_broadcast(
            RunDir.new_name, config.method.name, config.data.dataset
        )
        trained = start_run(config, run_dir, init=None if init is None else RunDir(init), minutes=minutes)
    return Run.of(trained)


def resume(run_dir: PathLike) -> Run:
    """Continue an interrupted run from its newest checkpoint, exactly as if it had not stopped."""
    with distributed.process_group():
        trained = resume_run(RunDir(run_dir))
    return Run.of(trained)


def load(run_dir: PathLike) -> Run:
    """A finished (or interrupted) run, its model rebuilt from its newest checkpoint (its data is not read)."""
    run = Run(RunDir(run_dir))
    run.model  # noqa: B018 -- load now, so a bad run directory fails here and not at first use
    return run


@dataclass(frozen=True)
class Clusters:
    """Images and their clusters, in ``paths`` order, with their backbone ``features`` (N × D float32).

    ``paths`` are exact (as the file system gives them: ``os.fsencode`` gives
    a name's bytes); ``skipped``: the unusable files left out, with why.
    """

    paths: tuple[str, ...]
    assignments: ClusterAssignments
    features: np.ndarray
    run: Run
    skipped: tuple[BadFile, ...] = ()

    @property
    def cluster(self) -> np.ndarray:
        """(N,) cluster ids."""
        return self.assignments.cluster

    @property
    def confidence(self) -> np.ndarray:
        """(N,) the head's probability, or the cosine similarity to the k-means centroid (see ``by``)."""
        return self.assignments.confidence

    @property
    def by(self) -> str:
        return self.assignments.by

    def sizes(self) -> np.ndarray:
        """Images per cluster, empty clusters included."""
        return self.assignments.sizes()

    def csv(self) -> str:
        """``path,cluster,confidence``, one row per image: what ``clusters.csv`` and ``clusterclr assign`` write
        (paths as ``path_text`` writes them; ``clusterclr.path_from_text`` reads one back)."""
        return assignments_csv(self.paths, self.assignments)


def cluster(
    folder: PathLike,
    clusters: int | str,
    *,
    out: PathLike | None = None,
    method: str | None = None,
    init: PathLike | None = None,
    weights: PathLike | None = None,
    epochs: int | None = None,
    minutes: float | None = None,
    copy_to: PathLike | None = None,
    config: PathLike | None = None,
    seed: int | None = None,
    overrides: Sequence[str] = (),
) -> Clusters:
    """Learn from a folder of images and group them into ``clusters`` (a number, or "auto"), as ``clusterclr cluster`` does.

    ``minutes``: a training budget in time instead of ``epochs``. ``weights``: a pretrained weights file to
    start from; without ``epochs`` (or ``minutes``) its features are clustered as they are.
    """
    folder = Path(folder)
    run_dir = RunDir(out) if out is not None else RunDir.new_name("cluster", folder.absolute().name)
    request = ClusterRequest(
        folder=folder, clusters=clusters, out=run_dir, method=method, init=None if init is None else RunDir(init),
        weights=None if weights is None else Path(weights), epochs=epochs, copy_to=None if copy_to is None else Path(copy_to),
        config_file=config, seed=seed, overrides=list(overrides), minutes=minutes,
    )
    return _clusters(cluster_folder(request))


def prepare(folder: PathLike, out: PathLike, size: str | int | None = None) -> dict[str, Any]:
    """Pack a folder of images into WebDataset tar shards in ``out`` (``size``: bytes per shard, e.g. "500MB");
    returns their shard index. Train on them with the data set ``shards`` and ``data.root=out``."""
    return prepare_shards(Path(folder), Path(out), size)


def finish_cluster(run_dir: PathLike, copy_to: PathLike | None = None) -> Clusters:
    """Finish a ``cluster`` run that stopped in training: continue it, then write its clusters."""
    return _clusters(resume_cluster_folder(RunDir(run_dir), None if copy_to is None else Path(copy_to)))


def _clusters(result: ClusterResult) -> Clusters:
    return Clusters(result.paths, result.assignments, result.features, Run.of(result.run), result.run.parts.splits.skipped)


class Run:
    """A run directory and what it holds: config, model, scores; and what can be done with a trained model."""

    def __init__(self, run_dir: PathLike | RunDir, model: Model | None = None, epoch: int | None = None) -> None:
        self.directory = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        if model is not None:
            self.__dict__["model"] = model
            self._epoch = epoch

    @classmethod
    def of(cls, trained: TrainedRun) -> Run:
        return cls(trained.run_dir, trained.parts, trained.epoch)

    def __repr__(self) -> str:
        return f"Run({str(self.directory)!r})"

    @cached_property
    def model(self) -> Model:
        model, self._epoch = load_model(self.directory)
        return model

    @property
    def config(self) -> Config:
        return self.model.config

    @property
    def epoch(self) -> int:
        """Epochs trained."""
        self.model  # noqa: B018 -- loading it sets the epoch
        return self._epoch

    @property
    def method(self) -> torch.nn.Module:
        return self.model.method

    @property
    def backbone(self) -> torch.nn.Module:
        return self.model.method.backbone

    @property
    def metrics(self) -> dict[str, Any]:
        """The run's metrics.json: final scores and every protocol's section ({} before its first evaluation)."""
        path = self.directory.metrics
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    def embed(self, images: Images) -> Embeddings:
        """Backbone features (and cluster probabilities, for methods with a head) of image files or folders, or of
        uint8 images (N × C × H × W tensor or array) at the run's channels; images are resized to its resolution."""
        if isinstance(images, (torch.Tensor, np.ndarray)):
            return embed(self.model, _as_dataset(images, self.model))
        return embed_files(self.model, collect_images(_as_items(images))).embeddings

    def assign(self, images: PathLike | Sequence[PathLike], skip_bad: bool | None = None) -> Clusters:
        """Image files (or every image under folders) put into this run's clusters, as ``clusterclr assign`` does.

        An unusable file is an error naming it, unless ``skip_bad`` (by default: whether the run was trained
        with ``data.skip_bad``): then it is left out and listed in ``skipped``.
        """
        if skip_bad is None:
            skip_bad = self.config.data.skip_bad
        embedded, assignments = assign_images(self.model, self.directory, collect_images(_as_items(images)), skip_bad)
        features = embedded.embeddings.features.numpy().astype(np.float32)
        return Clusters(tuple(map(str, embedded.paths)), assignments, features, self, embedded.skipped)

    def evaluate(
        self, protocols: Sequence[str] | None = None, seeds: Sequence[int] = (0,), options: ProtocolOptions | None = None
    ) -> dict[str, Any]:
        """Without ``protocols``: the standard evaluation, rewritten into metrics.json. With them: each protocol's
        scores (``evaluate.protocols``; ``options`` a ``ProtocolOptions``), merged into metrics.json and returned."""
        if not protocols:
            parts, epoch = load_parts(self.directory)
            return finish(parts, self.directory, epoch)
        unknown = [name for name in protocols if name not in PROTOCOLS]
        if unknown:
            raise UserError(f"unknown protocol {unknown[0]!r}; choose from {', '.join(PROTOCOLS)}")
        return evaluate_protocols(self.directory, list(protocols), list(seeds), options or ProtocolOptions())

    def fit_stage(
        self, clusters: int | str | None = None, settings: Mapping[str, Any] | None = None, progress: bool = True,
        resume: bool = False,
    ) -> dict[str, Any]:
        """Fit a clustering stage on this run's features (``clusterclr stage``); returns the run's new scores.

        ``clusters``: a number, "auto", or None (``stage.clusters``, else the run's K); ``settings``: the
        ``stage`` section's keys (``{"loss": "temi", "epochs": 50}``); ``resume``: continue a stopped stage.
        """
        _, metrics = stage_run(self.directory, clusters, dict(settings or {}), progress, resume)
        self.__dict__.pop("model", None)  # the model on disk now has the stage's head
        return metrics

    def fit_stage_end_to_end(
        self, out: PathLike, epochs: int = 50, self_label_epochs: int = 0, clusters: int | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> Run:
        """SCAN end to end from this run: a new run in ``out`` (``clusterclr stage --end-to-end``)."""
        return Run.of(end_to_end(self.directory, RunDir(out), epochs, self_label_epochs, clusters, dict(settings or {})))

    def stage_summary(self) -> str:
        """The run's clustering stage in one line, or "none"."""
        record = read_stage(self.directory.cluster_stage)
        if record is None:
            return "none"
        if record["head"] is None:
            return f"unfinished ({record['settings']['loss']}); continue it with: clusterclr stage --resume {self.directory}"
        chosen = "" if record["choice"] is None else f", K chosen by {record['choice']['criterion']}"
        losses, precision = record["head_losses"], record.get("neighbour_precision")
        neighbours = "" if precision is None else f"; {precision:.0%} of mined neighbours share an image's class"
        return (f"{record['settings']['loss']}, {record['clusters']} clusters{chosen}, head {record['kept_head']} of "
                f"{len(losses)} kept (loss {losses[record['kept_head']]:.4f}){neighbours}")

    def export(self, out: PathLike, format: str = "safetensors") -> Path:
        """The encoder as ``format`` (safetensors, torchscript or onnx) at ``out``, its preprocessing beside it."""
        return export_model(self.model, self.epoch, format, Path(out))

    def report(self) -> Path:
        """(Re)write the run's report.html; returns its path."""
        from clusterclr.report.run import report_run

        parts, epoch = load_parts(self.directory)
        return report_run(parts, self.directory, epoch)


def _as_items(images: PathLike | Sequence[PathLike]) -> list[str]:
    return [os.fspath(images)] if isinstance(images, (str, os.PathLike)) else [os.fspath(item) for item in images]


def _as_dataset(images: torch.Tensor | np.ndarray, model: Model) -> ImageDataset:
    pixels = torch.as_tensor(images)
    channels, size = model.method.data.channels, model.method.data.image_size
    if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[1] != channels:
        raise UserError(f"images must be uint8 N×{channels}×H×W for this run, got {pixels.dtype} {tuple(pixels.shape)}")
    dataset = ImageDataset(pixels.contiguous())
    if dataset.image_size != size:
        if size[0] != size[1]:
            raise UserError(f"the run was trained on {size[0]}×{size[1]} images; give images of that size")
        dataset = resize(dataset, size[0])
    return dataset
