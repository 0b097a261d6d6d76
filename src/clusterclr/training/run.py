"""A training run from start to finish: start or resume it, train, evaluate, write metrics.json and the report."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from clusterclr import distributed
from clusterclr.build import DATA_KEYS, Parts, backbone_state, build_parts
from clusterclr.config import Config
from clusterclr.configure import validate
from clusterclr.errors import OutputError, UserError
from clusterclr.evaluate.context import EvalContext
from clusterclr.evaluate.results import update_metrics
from clusterclr.evaluate.standard import evaluate_parts
from clusterclr.rundir import RunDir
from clusterclr.runlog import RunLog, SilentLog
from clusterclr.training.budget import check_budget, fit_to_time
from clusterclr.training.loop import Trainer
from clusterclr.weights import with_weights


@dataclass
class TrainedRun:
    """A run whose training is done: its directory, its parts in memory (data included) and its final scores."""

    run_dir: RunDir
    parts: Parts
    epoch: int
    metrics: dict[str, Any]  # {} on the ranks after the first of a distributed run: rank 0 evaluates


def start_run(config: Config, run_dir: RunDir, init: RunDir | None = None, minutes: float | None = None) -> TrainedRun:
    """Train a new run in ``run_dir``, evaluate it and write its metrics (rank 0 of a distributed run writes).

    ``init``: a run whose trained backbone (and normalisation) the new run
    starts from, to fine-tune it on other data; heads start afresh. Or
    ``model.weights``: a pretrained weights file to start from, which decides
    the architecture and the input (``weights.py``); the config records them.
    With ``train.epochs: 0`` either is a run of its features as they are.
    ``minutes``: train for as many epochs as fit in that time here (measured
    first; the config records the epochs it became), instead of ``train.epochs``
    and ``train.max_minutes``. Without it, ``train.max_minutes`` cuts
    ``train.epochs`` to what fits in that time, measured the same way.
    """
    if init is not None and config.model.weights is not None:
        raise UserError("--init and model.weights both give the backbone to start from; give one of them")
    check_budget(minutes)
    if distributed.is_main():
        run_dir.create()
    config, weights = with_weights(config)
    initial = None if init is None else init.read()[1]
    torch.manual_seed(config.seed)
    if initial is None:
        parts = build_parts(config, backbone_weights=weights)
    else:
        parts = build_parts(config, initial["normalisation"], backbone_state(initial["method"], init))
    trainer = Trainer(parts, run_dir)
    fit_to_time(trainer, minutes)
    if distributed.is_main():
        run_dir.write_config(config)
        run_dir.write_skipped_files(parts.splits.skipped)
    trainer.save()  # epoch 0: evaluate and embed work even on a run stopped in its first epoch
    return _train(trainer)


def resume_run(run_dir: RunDir) -> TrainedRun:
    """Continue the run in ``run_dir`` from its newest readable checkpoint, exactly as if it had not stopped.

    In a distributed run rank 0 reads the checkpoint and sends it to the
    others, so only rank 0's machine needs the run directory.
    """
    state, path = distributed.on_main_then_broadcast(run_dir.open_to_continue)
    config = validate(state["config"], source=f"config in {path}")
    torch.manual_seed(config.seed)
    trainer = Trainer(build_parts(config, state["normalisation"]), run_dir)
    _check_same_data(state["data_info"], asdict(trainer.method.data), path)
    trainer.restore(state, path)
    train = trainer.parts.splits.train
    if train.streamed:  # files skipped before the stop stay listed
        train.images.bad_files.remember(distributed.on_main_then_broadcast(run_dir.read_skipped_files))
    if distributed.is_main():
        run_dir.write_skipped_files(trainer.parts.splits.skipped)
    return _train(trainer)


def finish(parts: Parts, run_dir: RunDir, epoch: int, ctx: EvalContext | None = None) -> dict[str, Any]:
    """Final evaluation of ``parts`` at ``epoch``, written to metrics.json (atomically)."""
    ctx = ctx or EvalContext.of(parts, progress=False)
    metrics: dict[str, Any] = evaluate_parts(parts, ctx)
    if ctx.choice is not None:
        metrics["clusters_chosen_by"] = ctx.choice.criterion
    metrics.update(
        epoch=epoch,
        method=parts.config.method.name,
        dataset=parts.splits.name,
        eval_split=parts.splits.eval_split,
        num_train=len(parts.splits.train),
        num_test=len(parts.splits.test),
        clusters=ctx.clusters,
    )
    # Results of `evaluate --protocol` (their own keys) survive a re-evaluation.
    update_metrics(run_dir.metrics, metrics)
    return metrics


def _train(trainer: Trainer) -> TrainedRun:
    run_dir, parts = trainer.run_dir, trainer.parts
    if not distributed.is_main():
        with trainer.stop.listening():
            trainer.fit(SilentLog())
        return TrainedRun(run_dir, parts, trainer.epoch, {})
    # Log lines written after the checkpoint belong to work that is about to be redone; a run
    # resumed mid-epoch does not redo the epoch's start, so that epoch's "method" line stays.
    log = RunLog(run_dir.log, run_dir.tensorboard, keep_until_step=trainer.global_step,
                 epoch_start_redone=trainer.resume_point is None)
    try:
        with trainer.stop.listening():
            trainer.fit(log)
        # Training is done and checkpointed: from here a failure names the output and keeps the run.
        try:
            ctx = EvalContext.of(parts, progress=False)
            metrics = finish(parts, run_dir, trainer.epoch, ctx)
            log.write("eval", trainer.step, metrics)
        except Exception as err:
            raise OutputError.of(err, run_dir.metrics, run_dir) from err
    finally:
        log.close()
    if trainer.config.train.report:
        from clusterclr.report.run import (
            report_run,  # matplotlib and t-SNE load only when a report is wanted
        )

        try:
            report_run(parts, run_dir, trainer.epoch, ctx)
        except Exception as err:
            raise OutputError.of(err, run_dir.report, run_dir) from err
    return TrainedRun(run_dir, parts, trainer.epoch, metrics)


def _check_same_data(saved: dict[str, Any], now: dict[str, Any], path: Path) -> None:
    """A resumed run must see the data it started on, or its epochs and memory would not line up."""
    changed = [f"{key} {saved.get(key)} -> {now[key]}" for key in DATA_KEYS if _as_tuple(saved.get(key)) != _as_tuple(now[key])]
    if changed:
        raise UserError(f"the training data changed since {path} was written ({', '.join(changed)}); restore it to resume")


def _as_tuple(value: Any) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)
