"""A training run's checkpoints, and the random state that makes ``--resume`` exact.

Each epoch reseeds from (seed, epoch) (``epoch_seed``), so a run resumed
from an epoch-boundary checkpoint draws the same batches and the same
augmentations as one that never stopped. A checkpoint taken mid-epoch also
carries the step within the epoch, the epoch's running loss and every
rank's random state (and, beyond rank 0, its batch-norm running
statistics, which follow each rank's own slices between the epochs'
averaging); resuming there redraws the epoch's order, then restores them.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clusterclr import distributed
from clusterclr.build import Parts, load_method_state, model_state
from clusterclr.errors import UserError
from clusterclr.io import CHECKPOINT_FORMAT, save_checkpoint
from clusterclr.rundir import RunDir


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2**63)


def rank_seed(seed: int, epoch: int, rank: int) -> int:
    """The augmentation seed of ranks after the first (rank 0 goes on with the epoch's own stream)."""
    return (epoch_seed(seed, epoch) * 1_000_033 + rank) % (2**63)


@dataclass
class EpochProgress:
    """How far the current epoch has got: what a mid-epoch checkpoint carries to continue it exactly."""

    step: int = 0  # steps done in this epoch
    loss_sum: torch.Tensor | None = None  # summed loss of the steps that counted, on the device
    loss_steps: int = 0  # steps whose loss counted (skipped non-finite steps do not)
    seconds: float = 0.0  # time spent on this epoch before this process took it up
    rng: torch.Tensor | None = None  # global RNG state to restore when resuming
    cuda_rng: torch.Tensor | None = None
    # (rng, cuda_rng, batch-norm statistics) of ranks 1, 2, ... of a distributed run.
    other_ranks: list | None = None
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return self.seconds + time.perf_counter() - self.started

    def count(self, loss: torch.Tensor) -> None:
        self.loss_sum += loss.detach()
        self.loss_steps += 1


@dataclass
class TrainingPosition:
    """Where a checkpoint left training: epochs completed, non-finite steps skipped, the unfinished epoch if any."""

    epoch: int
    skipped_steps: int
    mid_epoch: EpochProgress | None


class Checkpoints:
    """Writes the run's checkpoints (rank 0) and reads one back into the model, optimiser and scaler."""

    def __init__(self, run_dir: RunDir, parts: Parts, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
        self.run_dir = run_dir
        self.parts = parts
        self.optimizer = optimizer
        self.scaler = scaler
        self.last_good: str | None = None  # the newest checkpoint written or loaded, described, for messages
        self.saved_at: tuple[int, int | None] | None = None  # (epoch, step in epoch or None) of that checkpoint

    def state(self, position: TrainingPosition) -> dict[str, Any]:
        state = {
            "format": CHECKPOINT_FORMAT,
            "epoch": position.epoch,
            "skipped_steps": position.skipped_steps,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            **model_state(self.parts),
        }
        progress = position.mid_epoch
        if progress is not None:
            cuda = self.parts.device.type == "cuda"
            ranks = distributed.gather_objects((
                torch.get_rng_state(),
                torch.cuda.get_rng_state(self.parts.device) if cuda else None,
                distributed.batch_norm_statistics(self.parts.method),
            ))
            state["mid_epoch"] = {
                "step": progress.step,
                # Every rank's losses so far, averaged: each rank resumes from the global sum.
                "loss_sum": (distributed.all_sum(progress.loss_sum.detach()) / distributed.world_size()).cpu(),
                "loss_steps": progress.loss_steps,
                "seconds": progress.elapsed(),
                "rng": ranks[0][0],
            }
            if cuda:
                state["mid_epoch"]["cuda_rng"] = ranks[0][1]
            if len(ranks) > 1:
                state["mid_epoch"]["other_ranks"] = [list(own) for own in ranks[1:]]
        return state

    def save(self, position: TrainingPosition, where: str) -> None:
        """Write a checkpoint at ``position`` (described as ``where``); every rank calls this, since a
        mid-epoch one gathers their random states, and rank 0 writes it."""
        path = self.run_dir.checkpoint
        state = self.state(position)
        if distributed.is_main():
            try:
                save_checkpoint(path, state)
            except UserError as err:
                kept = f"the last checkpoint, {self.last_good}, is intact" if self.last_good else "no checkpoint was written"
                raise UserError(f"{err}; {kept}; make room, then continue with: clusterclr train --resume {self.run_dir}") from None
        self.saved_at = (position.epoch, None if position.mid_epoch is None else position.mid_epoch.step)
        self.last_good = f"{path} ({where})"
        train = self.parts.splits.train
        if train.streamed:  # the unreadable files a streamed run has skipped so far, every rank's
            skipped = train.images.bad_files.everyone()
            if distributed.is_main():
                self.run_dir.write_skipped_files(skipped)

    def is_saved(self, epoch: int, progress: EpochProgress | None) -> bool:
        return self.saved_at == (epoch, None if progress is None else progress.step)

    def load(self, state: dict[str, Any], path: Path, steps_per_epoch: int) -> TrainingPosition:
        load_method_state(self.parts.method, state["method"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
        except (ValueError, KeyError, TypeError, RuntimeError) as err:
            raise UserError(f"{path}: the optimiser state does not match the optimiser its config builds: {err}") from None
        mid = state.get("mid_epoch")
        progress = None
        if mid is not None:
            if not 0 <= mid["step"] < steps_per_epoch:
                raise UserError(f"{path} stopped at step {mid['step']} of an epoch that now has {steps_per_epoch}")
            progress = EpochProgress(
                int(mid["step"]),
                mid["loss_sum"].to(self.parts.device),
                int(mid["loss_steps"]),
                float(mid["seconds"]),
                mid["rng"],
                mid.get("cuda_rng"),
                mid.get("other_ranks"),
            )
        position = TrainingPosition(int(state["epoch"]), int(state.get("skipped_steps", 0)), progress)
        self.saved_at = (position.epoch, None if progress is None else progress.step)
        return position

    def restore_rank_state(self, progress: EpochProgress, epoch: int) -> None:
        """Put this rank's random stream (and, beyond rank 0, its batch-norm statistics) where the interrupted run's were."""
        rank, device = distributed.rank(), self.parts.device
        if rank == 0:
            rng, cuda_rng = progress.rng, progress.cuda_rng
        elif progress.other_ranks is not None and len(progress.other_ranks) == distributed.world_size() - 1:
            rng, cuda_rng, batch_norm = progress.other_ranks[rank - 1]
            distributed.load_batch_norm_statistics(self.parts.method, batch_norm)
        else:
            warnings.warn(
                f"the checkpoint was taken mid-epoch by a run with a different number of processes: rank {rank} "
                f"draws fresh augmentations for the rest of epoch {epoch + 1}",
                stacklevel=2,
            )
            return
        torch.set_rng_state(rng)
        if cuda_rng is not None and device.type == "cuda":
            torch.cuda.set_rng_state(cuda_rng, device)
