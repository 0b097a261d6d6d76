"""The training loop, shared by every method.

Each epoch: let the method do its whole-data-set work (``on_epoch_start``),
reseed from (seed, epoch), ask the method for the epoch's order, and for
each batch take the uint8 images from the training data (``batches.py``: in
memory, or streamed by DataLoader workers), make the method's views on the
device, ask the method for its loss, and step. ``fit`` is that, in one
screen; checkpoints and exact resume live in ``checkpoint.py``, signals and
non-finite losses in ``guards.py``, starting and finishing a run in
``run.py``. An unreadable image met while streaming stops the run with a
checkpoint at that step, unless ``data.skip_bad``.

Under ``torchrun`` (``distributed.py``) every process runs this loop on its
slice of each global batch, with the method wrapped in
DistributedDataParallel; rank 0 alone logs, evaluates and writes. Ranks
share the epoch's order and draw their own augmentations; a stop request
on any rank stops all of them at the same step.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm import tqdm

from clusterclr import distributed
from clusterclr.build import Parts, training_batches
from clusterclr.data.streamed import BadImageError
from clusterclr.errors import Interrupted, UserError
from clusterclr.evaluate.standard import evaluate_parts
from clusterclr.methods.base import StepOutput
from clusterclr.methods.training_images import TrainingImages
from clusterclr.models.backbones import ResNet
from clusterclr.optim import build_optimizer, peak_lr, set_learning_rates
from clusterclr.progress import progress_bar
from clusterclr.rundir import RunDir
from clusterclr.runlog import RunLog, SilentLog
from clusterclr.training.batches import HostBatch
from clusterclr.training.checkpoint import (
    Checkpoints,
    EpochProgress,
    TrainingPosition,
    epoch_seed,
    rank_seed,
)
from clusterclr.training.guards import CollapseWatch, LossGuard, StopRequest


class Trainer:
    def __init__(self, parts: Parts, run_dir: RunDir) -> None:
        cfg = self.config = parts.config
        self.parts, self.run_dir, self.method = parts, run_dir, parts.method
        distributed.check_batch(cfg.optim.batch_size)  # before any work: the processes must share batches evenly
        # The module a step calls: the method, in DistributedDataParallel under torchrun.
        self.model = distributed.wrap(self.method, parts.device, cfg.train.sync_batch_norm, self.method.has_idle_parameters)
        if cfg.train.compile:
            _compile_backbones(self.method)
        self.optimizer = build_optimizer(self.method, cfg.optim)
        self.scaler = torch.amp.GradScaler(parts.device.type, enabled=parts.autocast_dtype == torch.float16)
        self.steps_per_epoch = len(parts.splits.train) // cfg.optim.batch_size
        self.total_steps = self.steps_per_epoch * cfg.train.epochs
        self.warmup_steps = round(cfg.optim.warmup_epochs * self.steps_per_epoch)
        self.peak_lr = peak_lr(cfg.optim)
        self.epoch = 0  # epochs completed
        self.resume_point: EpochProgress | None = None  # set when continuing a checkpoint taken mid-epoch
        train = parts.splits.train
        self.data = training_batches(parts)
        self.training_images = TrainingImages(
            train.images, train.labels, parts.views, parts.device, cfg.eval.batch_size,
            parts.autocast_dtype, seed=cfg.seed,
        )
        self.checkpoints = Checkpoints(run_dir, parts, self.optimizer, self.scaler)
        self.stop = StopRequest()
        self.loss_guard = LossGuard(cfg.train.skip_nonfinite_steps, 0, lambda: self.checkpoints.last_good)
        self.collapse = CollapseWatch()
        self.last_logs: dict[str, float] = {}

    def set_epochs(self, epochs: int) -> None:
        """Train for ``epochs`` in all; before training starts, since the learning-rate schedule spans them."""
        self.config.train.epochs = epochs
        self.total_steps = self.steps_per_epoch * epochs

    @property
    def step(self) -> int:
        return self.epoch * self.steps_per_epoch

    @property
    def global_step(self) -> int:
        """Steps done, counting a resumed epoch's finished part."""
        return self.step + (self.resume_point.step if self.resume_point else 0)

    # -- the loop ----------------------------------------------------------------
    def fit(self, log: RunLog | SilentLog) -> None:
        cfg = self.config
        bar = progress_bar(total=self.total_steps, initial=self.global_step, unit="step",
                           enabled=cfg.train.progress and distributed.is_main())
        self.method.train()
        while self.epoch < cfg.train.epochs:
            progress, order = self.start_epoch(log, bar)
            batches = self.data.batches(order, self.epoch, progress.step)
            while progress.step < self.steps_per_epoch:
                self.stop_if_requested(progress, bar)
                step = self.step + progress.step
                lr = self.set_learning_rate(step)
                out = self.loss(self.next_batch(batches, progress, bar))
                progress.step += 1
                if self.loss_guard.checks_every_step and distributed.any_rank(not torch.isfinite(out.loss.detach())):
                    bar.clear()
                    self.loss_guard.skip(step, self.epoch, out.loss, out.logs)
                    bar.update(1)
                    continue
                self.optimise(out, step)
                progress.count(out.loss)
                if (step + 1) % cfg.train.log_every == 0:
                    self.log_step(log, bar, step, lr, out)
                bar.update(1)
            self.end_epoch(progress, log, bar)
        self.stop_if_requested(None, bar)
        bar.close()

    def start_epoch(self, log: RunLog | SilentLog, bar: tqdm) -> tuple[EpochProgress, torch.Tensor]:
        """The epoch's whole-data-set work, seeds and order; a resumed epoch picks up its progress instead of the work."""
        progress, self.resume_point = self.resume_point, None
        if progress is None:
            self.stop_if_requested(None, bar)
            try:
                method_logs = self.method.on_epoch_start(self.epoch, self.training_images)
            except BadImageError as err:
                self.stop_for_bad_file(err, None, bar)
            # The hooks see the same gathered features on every rank; rank 0's results are everyone's.
            distributed.broadcast_state(self.method)
            if method_logs:
                bar.clear()
                log.write("method", self.step, {"epoch": self.epoch, **method_logs})
        torch.manual_seed(epoch_seed(self.config.seed, self.epoch))
        order = self.method.epoch_order()
        if distributed.rank():
            torch.manual_seed(rank_seed(self.config.seed, self.epoch, distributed.rank()))
        if progress is None:
            progress = EpochProgress(loss_sum=torch.zeros((), device=self.parts.device))
        else:
            self.checkpoints.restore_rank_state(progress, self.epoch)
        return progress, order

    def set_learning_rate(self, step: int) -> float:
        """Each parameter group's rate at ``step`` (its own scale of the schedule); returns the schedule's."""
        return set_learning_rates(self.optimizer, step, self.total_steps, self.warmup_steps, self.peak_lr)

    def next_batch(self, batches: Iterator[HostBatch], progress: EpochProgress, bar: tqdm) -> HostBatch:
        try:
            return next(batches)
        except BadImageError as err:
            self.stop_for_bad_file(err, progress, bar)

    def loss(self, host: HostBatch) -> StepOutput:
        """The method's loss on a step's host-side uint8 images: moved, augmented, stepped forward."""
        device, method = self.parts.device, self.method
        batch = host.to_device(self.parts.views, device, method.num_views, method.needs_clean_view)
        dtype = self.parts.autocast_dtype
        with torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
            return self.model(batch)

    def optimise(self, out: StepOutput, step: int) -> None:
        """Backward pass, optimiser step (through the fp16 scaler when it is on) and the method's state updates."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out.loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.method.after_optimizer_step((step + 1) / self.total_steps)

    def log_step(self, log: RunLog | SilentLog, bar: tqdm, step: int, lr: float, out: StepOutput) -> None:
        # The loss is read (a host sync) only here: a per-step read would stall the GPU on every step.
        logs = _mean_over_ranks(out.logs)
        loss = self.loss_guard.finite(logs.get("loss", out.loss.detach()), f"at step {step + 1}", self.epoch, logs)
        self.last_logs = {key: float(value) for key, value in logs.items()}
        log.write("step", step + 1, {"epoch": self.epoch + 1, "lr": lr, **self.last_logs})
        bar.set_postfix(epoch=self.epoch + 1, loss=f"{loss:.3f}", refresh=False)

    def end_epoch(self, progress: EpochProgress, log: RunLog | SilentLog, bar: tqdm) -> None:
        """Log the epoch, average batch-norm statistics over ranks, evaluate and checkpoint when due."""
        cfg = self.config
        if progress.loss_steps == 0:
            raise FloatingPointError(self.loss_guard.divergence("every step's loss was non-finite", self.epoch, None))
        mean_loss = self.loss_guard.finite(
            distributed.all_sum(progress.loss_sum) / distributed.world_size() / progress.loss_steps,
            f"by step {self.step + self.steps_per_epoch}", self.epoch,
        )
        self.epoch += 1
        bar.set_postfix(epoch=self.epoch, loss=f"{mean_loss:.3f}", refresh=False)  # log steps may not fall on the epoch's end
        # Without SyncBatchNorm each rank's running statistics followed its own slices.
        distributed.average_batch_norm_statistics(self.method)
        seconds = progress.elapsed()
        log.write("epoch", self.step, {
            "epoch": self.epoch,
            "loss": mean_loss,
            "seconds": round(seconds, 3),
            "images_per_second": round(self.steps_per_epoch * cfg.optim.batch_size / seconds, 1),
        })
        self.collapse.check(self.last_logs, self.epoch, before_warning=bar.clear)
        last = self.epoch == cfg.train.epochs
        if not last and cfg.train.eval_every and self.epoch % cfg.train.eval_every == 0 and distributed.is_main():
            bar.clear()
            log.write("eval", self.step, {"epoch": self.epoch, **evaluate_parts(self.parts)})
        if last or self.epoch % cfg.train.checkpoint_every == 0:
            self.save()

    # -- checkpoints and stops ---------------------------------------------------------
    def position(self, progress: EpochProgress | None = None) -> TrainingPosition:
        return TrainingPosition(self.epoch, self.loss_guard.skipped, progress)

    def save(self, progress: EpochProgress | None = None) -> None:
        self.checkpoints.save(self.position(progress), self.where(progress))

    def restore(self, state: dict, path: Path) -> None:
        """Continue from checkpoint ``state`` (read from ``path``)."""
        position = self.checkpoints.load(state, path, self.steps_per_epoch)
        self.epoch, self.loss_guard.skipped, self.resume_point = position.epoch, position.skipped_steps, position.mid_epoch
        self.checkpoints.last_good = f"{path} ({self.where(self.resume_point)})"

    def where(self, progress: EpochProgress | None) -> str:
        if progress is None:
            return f"end of epoch {self.epoch}" if self.epoch else "before training"
        return f"epoch {self.epoch + 1}, step {progress.step} of {self.steps_per_epoch}"

    def save_unless_saved(self, progress: EpochProgress | None) -> None:
        """Checkpoint this exact point before a stop, unless that is the checkpoint just written."""
        if not self.checkpoints.is_saved(self.epoch, progress):
            if progress is not None:
                # Never replace a good checkpoint with weights a non-finite step has already spoiled.
                self.loss_guard.finite(progress.loss_sum, f"by step {self.step + progress.step}", self.epoch)
            self.save(progress)

    def stop_for_bad_file(self, err: BadImageError, progress: EpochProgress | None, bar: tqdm) -> None:
        """An unreadable image met (not skipped): checkpoint this exact point and stop, saying how to go on."""
        bar.close()
        self.save_unless_saved(progress)
        raise UserError(
            f"{err.files[0].path}: {err.files[0].reason}, met at {self.where(progress)}; checkpoint written to "
            f"{self.run_dir.checkpoint}: replace the file and continue the run with --resume {self.run_dir}, "
            "or start it again with --set data.skip_bad=true"
        ) from None

    def stop_if_requested(self, progress: EpochProgress | None, bar: tqdm) -> None:
        """On a pending SIGINT/SIGTERM (on any rank): checkpoint this exact point (unless just done) and stop."""
        if not distributed.any_rank(self.stop.signal is not None):
            return
        if self.stop.signal is None:
            self.stop.signal = signal.SIGTERM  # another rank's request
        bar.close()
        self.save_unless_saved(progress)
        raise Interrupted(
            f"stopped by {signal.Signals(self.stop.signal).name} at {self.where(progress)}; checkpoint written to {self.run_dir.checkpoint}",
            self.stop.signal,
            self.run_dir.path,
        )


def _compile_backbones(method: torch.nn.Module) -> None:
    if not hasattr(torch.nn.Module, "compile"):
        raise UserError(f"train.compile needs torch 2.2 or later (this is {torch.__version__}); drop it")
    for module in method.modules():
        if isinstance(module, ResNet):
            module.compile()  # in place: parameter names, and so checkpoints, stay as they are


def _mean_over_ranks(logs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Logged values averaged over the ranks of a distributed run: the global batch's, near enough."""
    if distributed.world_size() == 1 or not logs:
        return logs
    values = distributed.all_sum(torch.stack([value.detach().float() for value in logs.values()]))
    return dict(zip(logs, values / distributed.world_size()))
