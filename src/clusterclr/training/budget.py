"""A training budget in minutes, instead of epochs or as a cap on them: the step time measured on this machine, turned into epochs."""

from __future__ import annotations

import copy
import math
import sys
import time

import torch

from clusterclr import distributed
from clusterclr.errors import UserError
from clusterclr.training.loop import Trainer

MEASURED_STEPS = 3


def check_budget(minutes: float | None, epochs: int | None = None) -> None:
    """A budget in minutes replaces the epochs: not both at once, and only a positive one."""
    if minutes is not None and (epochs is not None or not minutes > 0):
        raise UserError("--minutes sets a new run's training budget instead of --epochs: give one of them, "
                        "and a positive number")


def epochs_within(trainer: Trainer, minutes: float) -> tuple[int, float]:
    """How many whole epochs fit in ``minutes`` (at least 1), and the measured seconds per epoch.

    A warm-up step, then ``MEASURED_STEPS`` timed steps on the run's own
    images and model; the weights, optimiser, scaler and random state are
    put back afterwards, so the run trains exactly as if never measured.
    """
    method, optimizer, scaler = trainer.method, trainer.optimizer, trainer.scaler
    saved = copy.deepcopy((method.state_dict(), optimizer.state_dict(), scaler.state_dict()))
    rng = torch.get_rng_state()
    order = torch.randperm(trainer.method.data.num_images)
    batches = trainer.data.batches(order, 0)
    try:
        seconds = []
        for _ in range(MEASURED_STEPS + 1):
            start = time.perf_counter()
            host = next(batches, None)
            if host is None:  # an epoch of fewer steps: start it again
                batches = trainer.data.batches(order, 0)
                host = next(batches)
            out = trainer.loss(host)
            trainer.optimise(out, 0)
            float(out.loss.detach())  # waits for the device
            seconds.append(time.perf_counter() - start)
    finally:
        method.load_state_dict(saved[0])
        optimizer.load_state_dict(saved[1])
        scaler.load_state_dict(saved[2])
        torch.set_rng_state(rng)
    per_epoch = sorted(seconds[1:])[len(seconds[1:]) // 2] * trainer.steps_per_epoch
    return max(1, math.floor(minutes * 60 / per_epoch)), per_epoch


def fit_to_time(trainer: Trainer, minutes: float | None) -> None:
    """Set the epochs of a run about to start from a time budget, measured here (:func:`epochs_within`).

    ``minutes`` replaces ``train.epochs`` and ``train.max_minutes``; without
    it ``train.max_minutes`` cuts ``train.epochs`` to what fits in that time.
    Either way the config records the epochs it became.
    """
    train = trainer.config.train
    if minutes is not None:
        train.max_minutes = None
        budget = minutes
    elif train.max_minutes is not None and train.epochs > 0:
        budget = train.max_minutes
    else:
        return
    measured = epochs_within(trainer, budget)  # on every rank: the steps of a distributed run go together
    fitting, per_epoch = distributed.on_main_then_broadcast(lambda: measured)
    planned = train.epochs
    epochs = fitting if minutes is not None else min(fitting, planned)
    trainer.set_epochs(epochs)
    if distributed.is_main() and minutes is not None:
        print(f"{minutes:g} minutes of training: about {per_epoch:.1f} s per epoch here, so {epochs} epochs", file=sys.stderr)
    elif distributed.is_main() and epochs < planned:
        print(f"{planned} epochs would take about {planned * per_epoch / 60:.0f} minutes here ({per_epoch:.1f} s per epoch): "
              f"training {epochs}, what fits in train.max_minutes={budget:g} (--set train.max_minutes=null lifts the cap)",
              file=sys.stderr)
