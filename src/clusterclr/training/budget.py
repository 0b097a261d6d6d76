"""A training budget in minutes instead of epochs: the step time measured on this machine, turned into epochs."""

from __future__ import annotations

import copy
import math
import time

import torch

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
