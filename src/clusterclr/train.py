"""The training loop, shared by every method.

Each epoch: let the method do its whole-data-set work (``on_epoch_start``),
reseed from (seed, epoch), ask the method for the epoch's order, and for
each batch move the uint8 images to the device, make the method's views, ask
the method for its loss, and step. Reseeding per epoch is what makes ``--resume`` exact: a run
resumed from an epoch-boundary checkpoint draws the same batches and the
same augmentations as one that never stopped.
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from clusterclr.build import CHECKPOINT, Parts, build_parts, model_state, read_run
from clusterclr.config import Config
from clusterclr.errors import UserError
from clusterclr.evaluate.protocol import evaluate_parts
from clusterclr.io import save_checkpoint, write_json, write_text
from clusterclr.methods.base import Batch, TrainingImages
from clusterclr.optim import build_optimizer, lr_at, peak_lr
from clusterclr.runlog import RunLog


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2**63)


class Trainer:
    def __init__(self, parts: Parts, run_dir: Path) -> None:
        self.parts = parts
        self.config = parts.config
        self.run_dir = run_dir
        self.method = parts.method
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

    @property
    def step(self) -> int:
        return self.epoch * self.steps_per_epoch

    # -- checkpoints ---------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "format": 1,
            "epoch": self.epoch,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            **model_state(self.parts),
        }

    def save(self) -> None:
        save_checkpoint(self.run_dir / CHECKPOINT, self.state())

    def load(self, state: dict[str, Any]) -> None:
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])

    # -- the loop ----------------------------------------------------------------
    def fit(self, log: RunLog) -> None:
        cfg = self.config
        device, train = self.parts.device, self.parts.splits.train
        autocast = (
            torch.autocast(device.type, dtype=self.parts.autocast_dtype) if self.parts.autocast_dtype else nullcontext()
        )
        peak = peak_lr(cfg.optim)
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            unit="step",
            dynamic_ncols=True,
            disable=not cfg.train.progress,
            mininterval=0.5 if sys.stderr.isatty() else 30,
        )
        self.method.train()
        while self.epoch < cfg.train.epochs:
            method_logs = self.method.on_epoch_start(self.epoch, self.training_images)
            if method_logs:
                bar.clear()
                log.write("method", self.step, {"epoch": self.epoch, **method_logs})
            torch.manual_seed(epoch_seed(cfg.seed, self.epoch))
            order = self.method.epoch_order()
            epoch_start, epoch_loss = time.perf_counter(), torch.zeros((), device=device)
            for i in range(self.steps_per_epoch):
                step = self.step + i
                lr = lr_at(step, self.total_steps, self.warmup_steps, peak)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                indices = order[i * cfg.optim.batch_size : (i + 1) * cfg.optim.batch_size]
                batch = self._batch(train.images[indices].to(device, non_blocking=True), indices.to(device))
                with autocast:
                    out = self.method.training_step(batch)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(out.loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.method.after_optimizer_step((step + 1) / self.total_steps)
                epoch_loss += out.loss.detach()
                if (step + 1) % cfg.train.log_every == 0:
                    # Checked only here: a per-step check would stall the GPU on every step.
                    loss = self._finite_loss(out.loss.detach(), step)
                    values = {key: float(value) for key, value in out.logs.items()}
                    log.write("step", step + 1, {"epoch": self.epoch + 1, "lr": lr, **values})
                    bar.set_postfix(epoch=self.epoch + 1, loss=f"{loss:.3f}", refresh=False)
                bar.update(1)
            mean_loss = self._finite_loss(epoch_loss / self.steps_per_epoch, self.step + self.steps_per_epoch - 1)
            self.epoch += 1
            seconds = time.perf_counter() - epoch_start
            log.write("epoch", self.step, {
                "epoch": self.epoch,
                "loss": mean_loss,
                "seconds": round(seconds, 3),
                "images_per_second": round(self.steps_per_epoch * cfg.optim.batch_size / seconds, 1),
            })
            last = self.epoch == cfg.train.epochs
            if not last and cfg.train.eval_every and self.epoch % cfg.train.eval_every == 0:
                bar.clear()
                log.write("eval", self.step, {"epoch": self.epoch, **evaluate_parts(self.parts)})
            if last or self.epoch % cfg.train.checkpoint_every == 0:
                self.save()
        bar.close()

    def _finite_loss(self, loss: torch.Tensor, step: int) -> float:
        value = float(loss)
        if not math.isfinite(value):
            raise FloatingPointError(
                f"loss became {value} by step {step + 1} (epoch {self.epoch + 1}); the last good checkpoint is "
                f"{self.run_dir / CHECKPOINT}. Lower optim.lr or try train.precision=fp32"
            )
        return value

    def _batch(self, images: torch.Tensor, indices: torch.Tensor) -> Batch:
        views = self.parts.views(images, self.method.num_views)
        clean = self.parts.views.clean(images) if self.method.needs_clean_view else None
        if self.config.train.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
            clean = None if clean is None else clean.contiguous(memory_format=torch.channels_last)
        return Batch(views, indices, clean)


def start_run(config: Config, run_dir: Path) -> dict[str, Any]:
    """Train a new run in ``run_dir`` and write its final metrics."""
    if (run_dir / CHECKPOINT).exists():
        raise UserError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --out")
    torch.manual_seed(config.seed)
    trainer = Trainer(build_parts(config), run_dir)
    write_text(run_dir / "config.yaml", config.to_yaml())
    trainer.save()  # epoch 0: evaluate and embed work even on a run stopped in its first epoch
    return _train(trainer)


def resume_run(run_dir: Path) -> dict[str, Any]:
    """Continue the run in ``run_dir`` from its last checkpoint, exactly as if it had not stopped."""
    config, state = read_run(run_dir)
    torch.manual_seed(config.seed)
    trainer = Trainer(build_parts(config, state["normalisation"]), run_dir)
    trainer.load(state)
    return _train(trainer)


def _train(trainer: Trainer) -> dict[str, Any]:
    # Log lines written after the checkpoint belong to work that is about to be redone.
    log = RunLog(trainer.run_dir, keep_until_step=trainer.step)
    try:
        trainer.fit(log)
        metrics = finish(trainer.parts, trainer.run_dir, trainer.epoch)
        log.write("eval", trainer.step, metrics)
        return metrics
    finally:
        log.close()


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
    write_json(run_dir / "metrics.json", metrics)
    return metrics


def load_run(run_dir: Path) -> tuple[Parts, int]:
    """Rebuild a run's parts (data included) from its last checkpoint, and the epoch reached."""
    config, state = read_run(run_dir)
    parts = build_parts(config, state["normalisation"])
    parts.method.load_state_dict(state["method"])
    return parts, int(state["epoch"])
