"""The training loop, shared by every method.

Each epoch: let the method do its whole-data-set work (``on_epoch_start``),
reseed from (seed, epoch), ask the method for the epoch's order, and for
each batch move the uint8 images to the device, make the method's views, ask
the method for its loss, and step. Reseeding per epoch is what makes ``--resume`` exact: a run
resumed from an epoch-boundary checkpoint draws the same batches and the
same augmentations as one that never stopped.

Faults:

- SIGINT / SIGTERM ask the loop to stop: at the next step boundary it writes
  a mid-epoch checkpoint (the step within the epoch, the global RNG state and
  the epoch's running loss) and raises ``Interrupted``. Resuming there skips
  ``on_epoch_start`` (its results are buffers in the checkpoint), reseeds and
  draws the epoch's order as usual, then restores the saved RNG state, so the
  rest of the epoch is what it would have been. A second signal aborts at once.
- A non-finite loss stops the run (``FloatingPointError``) naming the step,
  the loss terms and the last good checkpoint, and never overwrites that
  checkpoint. It is checked at logging steps and epoch ends, so the device
  is not made to wait every step, unless ``train.skip_nonfinite_steps`` > 0:
  then every step is checked, up to that many bad steps are skipped (no
  optimiser step, no state update), and one more stops the run.
- Outputs collapsed to one point (``output_std`` below ``COLLAPSED_STD``) are
  warned about once.

Under ``torchrun`` (``distributed.py``) every process runs this loop on its
slice of each global batch, with the method wrapped in
DistributedDataParallel; rank 0 alone logs, evaluates and writes. Ranks
share the epoch's order and draw their own augmentations; a stop request
on any rank stops all of them at the same step, and a mid-epoch checkpoint
carries every rank's random state.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from clusterclr import distributed
from clusterclr.build import CHECKPOINT, Parts, backbone_state, build_parts, load_method_state, model_state, read_run
from clusterclr.config import Config, validate
from clusterclr.errors import Interrupted, UserError
from clusterclr.evaluate.protocol import evaluate_parts
from clusterclr.evaluate.results import update_metrics
from clusterclr.io import CHECKPOINT_FORMAT, load_newest_checkpoint, previous_checkpoint, save_checkpoint, write_text
from clusterclr.methods.base import Batch, StepOutput, TrainingImages
from clusterclr.models.backbones import ResNet
from clusterclr.optim import build_optimizer, lr_at, peak_lr
from clusterclr.runlog import RunLog, SilentLog

SKIPPED_FILES = "skipped_files.txt"
# Well-spread L2-normalised outputs have a per-dimension std of about 1/sqrt(dim), above 0.01 up
# to 10,000 dimensions; this far below it, every image maps to (nearly) the same point.
COLLAPSED_STD = 1e-3


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
    # (rng, cuda_rng, batch-norm statistics) of ranks 1, 2, ... of a distributed run: between the
    # epochs' averaging, each rank's running statistics follow its own slices.
    other_ranks: list | None = None
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return self.seconds + time.perf_counter() - self.started


class Trainer:
    def __init__(self, parts: Parts, run_dir: Path) -> None:
        self.parts = parts
        self.config = parts.config
        self.run_dir = run_dir
        self.method = parts.method
        self.method.gather_negatives = self.config.train.gather_negatives
        distributed.check_batch(self.config.optim.batch_size)  # before any work: the processes must share batches evenly
        # The module a step calls: the method, in DistributedDataParallel under torchrun.
        self.model = distributed.wrap(
            self.method, parts.device, self.config.train.sync_batch_norm, self.method.has_idle_parameters
        )
        if self.config.train.compile:
            if not hasattr(torch.nn.Module, "compile"):
                raise UserError(f"train.compile needs torch 2.2 or later (this is {torch.__version__}); drop it")
            for module in self.method.modules():
                if isinstance(module, ResNet):
                    module.compile()  # in place: parameter names, and so checkpoints, stay as they are
        self.optimizer = build_optimizer(self.method, self.config.optim)
        self.scaler = torch.amp.GradScaler(parts.device.type, enabled=parts.autocast_dtype == torch.float16)
        self.steps_per_epoch = len(parts.splits.train) // self.config.optim.batch_size
        self.total_steps = self.steps_per_epoch * self.config.train.epochs
        self.warmup_steps = round(self.config.optim.warmup_epochs * self.steps_per_epoch)
        self.epoch = 0  # epochs completed
        self.training_images = TrainingImages(
            parts.splits.train.images,
            parts.splits.train.labels,
            parts.views,
            parts.device,
            self.config.eval.batch_size,
            parts.autocast_dtype,
            self.config.train.channels_last,
            self.config.seed,
        )
        self.resume_point: EpochProgress | None = None  # set when continuing a checkpoint taken mid-epoch
        self.skipped_steps = 0  # non-finite steps skipped so far in the run
        self.stop_signal: int | None = None  # set by the signal handler; honoured at the next step
        self.last_good: str | None = None  # the newest checkpoint written or loaded, for messages
        self._saved_at: tuple[int, int | None] | None = None  # (epoch, step in epoch or None) of that checkpoint
        self._last_logs: dict[str, float] = {}
        self._warned_collapse = False

    @property
    def step(self) -> int:
        return self.epoch * self.steps_per_epoch

    @property
    def global_step(self) -> int:
        """Steps done, counting a resumed epoch's finished part."""
        return self.step + (self.resume_point.step if self.resume_point else 0)

    # -- checkpoints ---------------------------------------------------------
    def state(self, progress: EpochProgress | None = None) -> dict[str, Any]:
        state = {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "skipped_steps": self.skipped_steps,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            **model_state(self.parts),
        }
        if progress is not None:
            cuda = self.parts.device.type == "cuda"
            ranks = distributed.gather_objects((
                torch.get_rng_state(),
                torch.cuda.get_rng_state(self.parts.device) if cuda else None,
                distributed.batch_norm_statistics(self.method),
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

    def save(self, progress: EpochProgress | None = None) -> None:
        """Write a checkpoint (rank 0); every rank calls this, since a mid-epoch one gathers their random states."""
        path = self.run_dir / CHECKPOINT
        state = self.state(progress)
        if distributed.is_main():
            try:
                save_checkpoint(path, state)
            except UserError as err:
                kept = f"the last checkpoint, {self.last_good}, is intact" if self.last_good else "no checkpoint was written"
                raise UserError(f"{err}; {kept}; make room, then continue with: clusterclr train --resume {self.run_dir}") from None
        self._saved_at = (self.epoch, None if progress is None else progress.step)
        self.last_good = f"{path} ({self._where(progress)})"

    def load(self, state: dict[str, Any], path: Path) -> None:
        load_method_state(self.method, state["method"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
        except (ValueError, KeyError, TypeError, RuntimeError) as err:
            raise UserError(f"{path}: the optimiser state does not match the optimiser its config builds: {err}") from None
        self.epoch = int(state["epoch"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        mid = state.get("mid_epoch")
        if mid is not None:
            if not 0 <= mid["step"] < self.steps_per_epoch:
                raise UserError(f"{path} stopped at step {mid['step']} of an epoch that now has {self.steps_per_epoch}")
            self.resume_point = EpochProgress(
                int(mid["step"]),
                mid["loss_sum"].to(self.parts.device),
                int(mid["loss_steps"]),
                float(mid["seconds"]),
                mid["rng"],
                mid.get("cuda_rng"),
                mid.get("other_ranks"),
            )
        self._saved_at = (self.epoch, None if mid is None else self.resume_point.step)
        self.last_good = f"{path} ({self._where(self.resume_point)})"

    def _where(self, progress: EpochProgress | None) -> str:
        if progress is None:
            return f"end of epoch {self.epoch}" if self.epoch else "before training"
        return f"epoch {self.epoch + 1}, step {progress.step} of {self.steps_per_epoch}"

    # -- the loop ----------------------------------------------------------------
    def fit(self, log: RunLog | SilentLog) -> None:
        cfg = self.config
        device, train = self.parts.device, self.parts.splits.train
        peak = peak_lr(cfg.optim)
        batch_size = cfg.optim.batch_size
        check_every_step = cfg.train.skip_nonfinite_steps > 0
        bar = tqdm(
            total=self.total_steps,
            initial=self.global_step,
            unit="step",
            dynamic_ncols=True,
            disable=not (cfg.train.progress and distributed.is_main()),
            mininterval=0.5 if sys.stderr.isatty() else 30,
        )
        self.method.train()
        while self.epoch < cfg.train.epochs:
            progress, self.resume_point = self.resume_point, None
            if progress is None:
                self._stop_if_requested(None, bar)
                method_logs = self.method.on_epoch_start(self.epoch, self.training_images)
                # The hooks see the same gathered features on every rank; rank 0's results are everyone's.
                distributed.broadcast_state(self.method)
                if method_logs:
                    bar.clear()
                    log.write("method", self.step, {"epoch": self.epoch, **method_logs})
            torch.manual_seed(epoch_seed(cfg.seed, self.epoch))
            order = self.method.epoch_order()
            if distributed.rank():
                torch.manual_seed(rank_seed(cfg.seed, self.epoch, distributed.rank()))
            if progress is None:
                progress = EpochProgress(loss_sum=torch.zeros((), device=device))
            else:
                self._restore_rank_state(progress)
            while progress.step < self.steps_per_epoch:
                self._stop_if_requested(progress, bar)
                i = progress.step
                step = self.step + i
                lr = lr_at(step, self.total_steps, self.warmup_steps, peak)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                indices = distributed.local_part(order[i * batch_size : (i + 1) * batch_size])
                out = self.loss(train.images[indices], indices)
                progress.step += 1
                if check_every_step and distributed.any_rank(not torch.isfinite(out.loss.detach())):
                    bar.clear()
                    self._skip_nonfinite(step, out)
                    bar.update(1)
                    continue
                self.optimise(out, step)
                progress.loss_sum += out.loss.detach()
                progress.loss_steps += 1
                if (step + 1) % cfg.train.log_every == 0:
                    # Checked only here: a per-step check would stall the GPU on every step.
                    logs = _mean_over_ranks(out.logs)
                    loss = self._finite_loss(logs.get("loss", out.loss.detach()), f"at step {step + 1}", logs)
                    self._last_logs = {key: float(value) for key, value in logs.items()}
                    log.write("step", step + 1, {"epoch": self.epoch + 1, "lr": lr, **self._last_logs})
                    bar.set_postfix(epoch=self.epoch + 1, loss=f"{loss:.3f}", refresh=False)
                bar.update(1)
            if progress.loss_steps == 0:
                raise FloatingPointError(self._divergence("every step's loss was non-finite", None))
            mean_loss = self._finite_loss(
                distributed.all_sum(progress.loss_sum) / distributed.world_size() / progress.loss_steps,
                f"by step {self.step + self.steps_per_epoch}",
            )
            self.epoch += 1
            # Without SyncBatchNorm each rank's running statistics followed its own slices.
            distributed.average_batch_norm_statistics(self.method)
            seconds = progress.elapsed()
            log.write("epoch", self.step, {
                "epoch": self.epoch,
                "loss": mean_loss,
                "seconds": round(seconds, 3),
                "images_per_second": round(self.steps_per_epoch * batch_size / seconds, 1),
            })
            self._warn_if_collapsed(bar)
            last = self.epoch == cfg.train.epochs
            if not last and cfg.train.eval_every and self.epoch % cfg.train.eval_every == 0 and distributed.is_main():
                bar.clear()
                log.write("eval", self.step, {"epoch": self.epoch, **evaluate_parts(self.parts)})
            if last or self.epoch % cfg.train.checkpoint_every == 0:
                self.save()
        self._stop_if_requested(None, bar)
        bar.close()

    def loss(self, images: torch.Tensor, indices: torch.Tensor) -> StepOutput:
        """The method's loss on host-side uint8 ``images`` (training-set rows ``indices``): moved, augmented, stepped forward."""
        device = self.parts.device
        batch = self._batch(images.to(device, non_blocking=True), indices.to(device))
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

    def _restore_rank_state(self, progress: EpochProgress) -> None:
        """Put this rank's random stream (and, beyond rank 0, its batch-norm statistics) where the interrupted run's were."""
        rank, device = distributed.rank(), self.parts.device
        if rank == 0:
            rng, cuda_rng = progress.rng, progress.cuda_rng
        elif progress.other_ranks is not None and len(progress.other_ranks) == distributed.world_size() - 1:
            rng, cuda_rng, batch_norm = progress.other_ranks[rank - 1]
            distributed.load_batch_norm_statistics(self.method, batch_norm)
        else:
            warnings.warn(
                f"the checkpoint was taken mid-epoch by a run with a different number of processes: rank {rank} "
                f"draws fresh augmentations for the rest of epoch {self.epoch + 1}",
                stacklevel=2,
            )
            return
        torch.set_rng_state(rng)
        if cuda_rng is not None and device.type == "cuda":
            torch.cuda.set_rng_state(cuda_rng, device)

    def _stop_if_requested(self, progress: EpochProgress | None, bar: tqdm) -> None:
        """On a pending SIGINT/SIGTERM (on any rank): checkpoint this exact point (unless just done) and stop."""
        if not distributed.any_rank(self.stop_signal is not None):
            return
        if self.stop_signal is None:
            self.stop_signal = signal.SIGTERM  # another rank's request
        bar.close()
        if self._saved_at != (self.epoch, None if progress is None else progress.step):
            if progress is not None:
                # Never replace a good checkpoint with weights a non-finite step has already spoiled.
                self._finite_loss(progress.loss_sum, f"by step {self.step + progress.step}")
            self.save(progress)
        raise Interrupted(
            f"stopped by {signal.Signals(self.stop_signal).name} at {self._where(progress)}; "
            f"checkpoint written to {self.run_dir / CHECKPOINT}",
            self.stop_signal,
            self.run_dir,
        )

    def _finite_loss(self, loss: torch.Tensor, where: str, terms: dict[str, torch.Tensor] | None = None) -> float:
        value = float(loss)
        if not math.isfinite(value):
            raise FloatingPointError(self._divergence(f"loss became {value} {where}", terms))
        return value

    def _skip_nonfinite(self, step: int, out: StepOutput) -> None:
        self.skipped_steps += 1
        allowed = self.config.train.skip_nonfinite_steps
        what = f"loss became {float(out.loss.detach())} at step {step + 1}"
        if self.skipped_steps > allowed:
            raise FloatingPointError(
                self._divergence(f"{what}, non-finite step {self.skipped_steps} (train.skip_nonfinite_steps={allowed})", out.logs)
            )
        warnings.warn(
            f"{what} (epoch {self.epoch + 1}; {_describe(out.logs)}); step skipped, "
            f"{self.skipped_steps} of {allowed} allowed so far",
            stacklevel=2,
        )

    def _divergence(self, what: str, terms: dict[str, torch.Tensor] | None) -> str:
        at = f"{what} (epoch {self.epoch + 1})"
        at += f"; loss terms: {_describe(terms)}" if terms else "; set train.log_every=1 to find the step"
        return (
            f"{at}; the last good checkpoint is {self.last_good}. Lower optim.lr, try train.precision=fp32, "
            f"or skip a few bad steps with --set train.skip_nonfinite_steps=N"
        )

    def _warn_if_collapsed(self, bar: tqdm) -> None:
        std = self._last_logs.get("output_std")
        if std is None or std >= COLLAPSED_STD or self._warned_collapse:
            return
        self._warned_collapse = True
        bar.clear()
        warnings.warn(
            f"the outputs have collapsed at epoch {self.epoch}: output_std={std:.2g}, where well-spread outputs "
            f"give about 1/sqrt(dim), so every image maps to nearly the same point and the features carry "
            f"little information; try a lower optim.lr or a different method",
            stacklevel=2,
        )

    def _batch(self, images: torch.Tensor, indices: torch.Tensor) -> Batch:
        views = self.parts.views(images, self.method.num_views)
        clean = self.parts.views.clean(images) if self.method.needs_clean_view else None
        if self.config.train.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
            clean = None if clean is None else clean.contiguous(memory_format=torch.channels_last)
        return Batch(views, indices, clean)


def _mean_over_ranks(logs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Logged values averaged over the ranks of a distributed run: the global batch's, near enough."""
    if distributed.world_size() == 1 or not logs:
        return logs
    values = distributed.all_sum(torch.stack([value.detach().float() for value in logs.values()]))
    return dict(zip(logs, values / distributed.world_size()))


def _describe(terms: dict[str, torch.Tensor]) -> str:
    return ", ".join(f"{key}={float(value):.4g}" for key, value in terms.items())


def start_run(config: Config, run_dir: Path, init: Path | None = None) -> dict[str, Any]:
    """Train a new run in ``run_dir`` and write its final metrics (rank 0 of a distributed run writes; the others return {}).

    ``init``: a run directory whose trained backbone (and normalisation) the
    new run starts from, to fine-tune it on other data; heads start afresh.
    """
    checkpoint = run_dir / CHECKPOINT
    if distributed.is_main():
        if checkpoint.exists() or previous_checkpoint(checkpoint).exists():
            raise UserError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --out")
        _check_writable(run_dir)
    initial = None if init is None else read_run(init)[1]
    torch.manual_seed(config.seed)
    if initial is None:
        parts = build_parts(config)
    else:
        parts = build_parts(config, initial["normalisation"], backbone_state(initial["method"], init))
    trainer = Trainer(parts, run_dir)
    if distributed.is_main():
        write_text(run_dir / "config.yaml", config.to_yaml())
        _list_skipped_files(trainer)
    trainer.save()  # epoch 0: evaluate and embed work even on a run stopped in its first epoch
    return _train(trainer)


def resume_run(run_dir: Path) -> dict[str, Any]:
    """Continue the run in ``run_dir`` from its newest readable checkpoint, exactly as if it had not stopped.

    In a distributed run rank 0 reads the checkpoint and sends it to the
    others, so only rank 0's machine needs the run directory.
    """
    state, path = distributed.on_main_then_broadcast(_open_run, run_dir)
    config = validate(state["config"], source=f"config in {path}")
    torch.manual_seed(config.seed)
    trainer = Trainer(build_parts(config, state["normalisation"]), run_dir)
    _check_same_data(state["data_info"], asdict(trainer.method.data), path)
    trainer.load(state, path)
    if distributed.is_main():
        _list_skipped_files(trainer)
    return _train(trainer)


def _open_run(run_dir: Path) -> tuple[dict[str, Any], Path]:
    """The newest readable checkpoint of ``run_dir`` and its path, the directory made ready to go on writing."""
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    newest = run_dir / CHECKPOINT
    state, path = load_newest_checkpoint(newest)
    _check_writable(run_dir)
    if path != newest and newest.exists():
        # Kept for a look, and out of the way: the next save would otherwise rotate it over the good one.
        os.replace(newest, newest.with_suffix(".unreadable"))
    # Temporary files of checkpoint writes cut short by a kill: as large as a checkpoint, and useless.
    for stale in newest.parent.glob(f".{newest.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    return state, path


def _check_writable(run_dir: Path) -> None:
    """Fail before any work if the run directory cannot be written."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir} is a file, not a run directory; choose another --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as err:
        raise UserError(f"cannot write to run directory {run_dir}: {err.strerror or err}") from None


def _check_same_data(saved: dict[str, Any], now: dict[str, Any], path: Path) -> None:
    """A resumed run must see the data it started on, or its epochs and memory would not line up."""
    changed = [f"{key} {saved.get(key)} -> {now[key]}" for key in now if _as_tuple(saved.get(key)) != _as_tuple(now[key])]
    if changed:
        raise UserError(f"the training data changed since {path} was written ({', '.join(changed)}); restore it to resume")


def _as_tuple(value: Any) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def _list_skipped_files(trainer: Trainer) -> None:
    skipped = trainer.parts.splits.skipped
    if skipped:
        write_text(trainer.run_dir / SKIPPED_FILES, "".join(f"{bad.path}\t{bad.reason}\n" for bad in skipped))


@contextmanager
def _stop_on_signals(trainer: Trainer) -> Iterator[None]:
    """While training, SIGINT/SIGTERM ask for a checkpoint and a clean stop; a second one aborts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may install handlers; elsewhere signals keep their defaults
        return

    def request_stop(signal_number: int, frame: Any) -> None:
        if trainer.stop_signal is not None:
            raise KeyboardInterrupt
        trainer.stop_signal = signal_number

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def _train(trainer: Trainer) -> dict[str, Any]:
    # Log lines written after the checkpoint belong to work that is about to be redone; a run
    # resumed mid-epoch does not redo the epoch's start, so that epoch's "method" line stays.
    if not distributed.is_main():
        with _stop_on_signals(trainer):
            trainer.fit(SilentLog())
        return {}
    log = RunLog(trainer.run_dir, keep_until_step=trainer.global_step, epoch_start_redone=trainer.resume_point is None)
    try:
        with _stop_on_signals(trainer):
            trainer.fit(log)
        metrics = finish(trainer.parts, trainer.run_dir, trainer.epoch)
        log.write("eval", trainer.step, metrics)
    finally:
        log.close()
    if trainer.config.train.report:
        from clusterclr.report.run import report_run  # matplotlib and t-SNE load only when a report is wanted

        report_run(trainer.parts, trainer.run_dir, trainer.epoch)
    return metrics


def finish(parts: Parts, run_dir: Path, epoch: int) -> dict[str, Any]:
    """Final evaluation of ``parts`` at ``epoch``, written to metrics.json (atomically)."""
    metrics: dict[str, Any] = evaluate_parts(parts)
    metrics.update(
        epoch=epoch,
        method=parts.config.method.name,
        dataset=parts.splits.name,
        eval_split=parts.splits.eval_split,
        num_train=len(parts.splits.train),
        num_test=len(parts.splits.test),
        clusters=parts.eval_clusters,
    )
    # Results of `evaluate --protocol` (their own keys) survive a re-evaluation.
    update_metrics(run_dir / "metrics.json", metrics)
    return metrics


def load_run(run_dir: Path) -> tuple[Parts, int]:
    """Rebuild a run's parts (data included) from its newest checkpoint, and the epoch reached."""
    config, state = read_run(run_dir)
    parts = build_parts(config, state["normalisation"])
    load_method_state(parts.method, state["method"])
    return parts, int(state["epoch"])
