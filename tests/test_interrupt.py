"""Real signals against a real training process: a stopped or killed run loses nothing.

Each interrupted run is a child process on digits at tiny settings, its
second epoch slowed by a sleep (results do not depend on time) so the parent
can signal it at a chosen point. The resumed run (in this process) must end
exactly where an uninterrupted one does (CPU, one thread).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import clusterclr
from clusterclr.configure import build_config
from clusterclr.io import load_checkpoint, previous_checkpoint
from clusterclr.rundir import RunDir
from clusterclr.runlog import read_log

TINY = [
    "model.width=0.125", "optim.batch_size=128", "train.progress=false", "train.report=false", "train.eval_every=0",
    "train.checkpoint_every=1", "train.log_every=1", "train.num_threads=1", "train.device=cpu",
    "method.projection_hidden_dim=64", "method.projection_dim=32",
]
EPOCHS = 2

# The child: the CLI, with each step slowed and, when STALL_MARKER is set, the last checkpoint
# write stopped halfway (half its bytes on disk, then a marker file, then a long sleep).
CHILD = """
import io, os, sys, time
from pathlib import Path
import clusterclr.io as cio
from clusterclr.cli import main
from clusterclr.training.loop import Trainer

loss = Trainer.loss
Trainer.loss = lambda self, *args: (time.sleep(0.1 * (self.epoch == 1)), loss(self, *args))[1]

marker = os.environ.get("STALL_MARKER")
real_atomic_write = cio.atomic_write
writes = []

def stalling_atomic_write(path, write, keep_previous=None):
    if Path(path).name == "last.pt":
        writes.append(path)
    if marker and len(writes) == int(os.environ["STALL_AT_WRITE"]) and Path(path).name == "last.pt":
        def half_then_stall(f):
            whole = io.BytesIO()
            write(whole)
            f.write(whole.getvalue()[: len(whole.getvalue()) // 2])
            f.flush()
            os.fsync(f.fileno())
            Path(marker).touch()
            time.sleep(600)
        return real_atomic_write(path, half_then_stall, keep_previous)
    return real_atomic_write(path, write, keep_previous)

cio.atomic_write = stalling_atomic_write
sys.exit(main(sys.argv[1:]))
"""


def child(run: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    args = ["train", "--out", str(run), "--epochs", str(EPOCHS), "--set", *TINY]
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def wait_for(condition, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the child never reached the point to signal it at"
        time.sleep(0.02)


def step_losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_log(RunDir(run).log) if r["kind"] == "step"]


@pytest.fixture(autouse=True, scope="module")
def restore_threads():
    # The runs in this process set torch's thread count (train.num_threads=1); later tests want it back.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """A run that was never interrupted."""
    run = tmp_path_factory.mktemp("reference") / "run"
    clusterclr.train(build_config(flags={"train.epochs": EPOCHS}, overrides=TINY), out=run)
    return run


def test_sigterm_mid_epoch_checkpoints_and_resumes_to_the_same_result(reference, tmp_path):
    run = tmp_path / "run"
    process = child(run)
    # Steps 12 onwards belong to epoch 2; ten more steps of at least 0.1 s remain when it is seen.
    wait_for(lambda: any(r["kind"] == "step" and r["epoch"] == 2 for r in read_log(RunDir(run).log)), process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)

    assert process.returncode == 143, stderr
    assert "Traceback" not in stderr
    assert "stopped by SIGTERM at epoch 2, step" in stderr and f"clusterclr train --resume {run}" in stderr
    state = load_checkpoint(RunDir(run).checkpoint)
    assert state["epoch"] == 1 and 1 <= state["mid_epoch"]["step"] < 11
    assert not (run / "metrics.json").exists()

    clusterclr.resume(run)
    assert json.loads((run / "metrics.json").read_text()) == json.loads((reference / "metrics.json").read_text())
    assert step_losses(run) == step_losses(reference)  # every step logged once, with the same loss


def test_sigkill_during_a_checkpoint_write_leaves_the_previous_one_loadable(reference, tmp_path):
    run, marker = tmp_path / "run", tmp_path / "stalled"
    # Writes: before training, after epoch 1, after epoch 2 (the one killed halfway).
    process = child(run, {"STALL_MARKER": str(marker), "STALL_AT_WRITE": "3"})
    wait_for(marker.exists, process)
    process.kill()
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL

    half_written = list((run / "checkpoints").glob(".last.pt.*.tmp"))
    assert len(half_written) == 1 and half_written[0].stat().st_size > 0
    assert load_checkpoint(RunDir(run).checkpoint)["epoch"] == 1
    assert load_checkpoint(previous_checkpoint(RunDir(run).checkpoint))["epoch"] == 0

    clusterclr.resume(run)
    assert not list((run / "checkpoints").glob("*.tmp"))  # the dead write's leftovers are cleared
    assert json.loads((run / "metrics.json").read_text()) == json.loads((reference / "metrics.json").read_text())
    assert step_losses(run) == step_losses(reference)
