"""Faults during and around training lose nothing and let nothing in.

Unreadable checkpoints fall back to the previous one, a full disk or an
unwritable run directory is a clear error with the last checkpoint intact, a
non-finite loss stops the run (or is skipped) naming the step, collapse is
warned about, hostile or mismatched checkpoints are refused, and ``--resume
auto`` finds the run to continue.
"""

from __future__ import annotations

import itertools
import json
import os
import pathlib
import pickle
import shutil
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import clusterclr
import clusterclr.io
from clusterclr.build import load_model
from clusterclr.cli import main
from clusterclr.configure import build_config
from clusterclr.errors import Interrupted, UserError
from clusterclr.io import load_checkpoint, previous_checkpoint
from clusterclr.methods.base import StepOutput
from clusterclr.methods.simclr import SimCLR
from clusterclr.rundir import RunDir

TINY = [
    "model.width=0.125", "optim.batch_size=128", "train.progress=false", "train.report=false", "train.eval_every=0",
    "train.checkpoint_every=1", "train.log_every=1", "train.num_threads=1",
    "method.projection_hidden_dim=64", "method.projection_dim=32",
]


@pytest.fixture(autouse=True, scope="module")
def restore_threads():
    # The runs here use one thread (train.num_threads=1, far faster on a busy machine); later tests want theirs back.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def tiny(epochs: int, *extra: str):
    return build_config(flags={"train.epochs": epochs}, overrides=TINY + list(extra))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A two-epoch run: last.pt at epoch 2, previous.pt at epoch 1."""
    run = tmp_path_factory.mktemp("finished") / "run"
    clusterclr.train(tiny(2), out=run)
    return run


@pytest.fixture
def run(finished, tmp_path) -> Path:
    """A copy of the finished run to damage."""
    return Path(shutil.copytree(finished, tmp_path / "run"))


# --- checkpoints: rotation and fallback ------------------------------------------------------------


def test_an_unreadable_newest_checkpoint_falls_back_to_the_previous_one(run, finished):
    last = RunDir(run).checkpoint
    assert load_checkpoint(last)["epoch"] == 2 and load_checkpoint(previous_checkpoint(last))["epoch"] == 1

    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # truncated
    with pytest.warns(UserWarning, match=r"cannot load checkpoint .*last.pt.*using the previous checkpoint .*previous.pt \(epoch 1\)"):
        assert RunDir(run).read()[1]["epoch"] == 1
    # Resuming from it redoes epoch 2 exactly, and sets the bad file aside rather than keeping it as "previous".
    with pytest.warns(UserWarning, match="using the previous checkpoint"):
        clusterclr.resume(run)
    assert json.loads((run / "metrics.json").read_text()) == json.loads((finished / "metrics.json").read_text())
    assert (run / "checkpoints" / "last.unreadable").is_file()
    assert load_checkpoint(last)["epoch"] == 2 and load_checkpoint(previous_checkpoint(last))["epoch"] == 1

    last.unlink()  # killed between renaming last.pt aside and renaming the new one in
    with pytest.warns(UserWarning, match=r"no checkpoint at .*last.pt; using the previous"):
        assert RunDir(run).read()[1]["epoch"] == 1
    previous_checkpoint(last).write_bytes(b"")
    with pytest.raises(UserError, match=r"no checkpoint at .*last.pt"):
        RunDir(run).read()


def fill_the_disk_for(monkeypatch, name: str, when=lambda: True) -> None:
    """Writes of files called ``name`` through clusterclr.io fail (while ``when()``) as on a full disk."""
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full to make writes fail with ENOSPC")
    real_mkstemp = tempfile.mkstemp

    def on_a_full_disk(*args, **kwargs):
        fd, temporary = real_mkstemp(*args, **kwargs)
        if Path(temporary).name.startswith(f".{name}.") and when():
            os.close(fd)
            fd = os.open("/dev/full", os.O_WRONLY)  # every write fails: No space left on device
        return fd, temporary

    monkeypatch.setattr(clusterclr.io.tempfile, "mkstemp", on_a_full_disk)


def test_a_full_disk_is_a_clear_error_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    fill_the_disk_for(monkeypatch, "last.pt", when=RunDir(run).checkpoint.exists)
    assert main(["train", "--out", str(run), "--epochs", "2", "--set", *TINY]) == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    assert f"cannot write {RunDir(run).checkpoint}: No space left on device" in error
    assert f"the last checkpoint, {RunDir(run).checkpoint} (before training), is intact" in error
    assert f"clusterclr train --resume {run}" in error
    assert load_checkpoint(RunDir(run).checkpoint)["epoch"] == 0
    assert not list((run / "checkpoints").glob(".*.tmp"))


def test_an_output_written_after_training_that_fails_keeps_the_run_and_names_the_command(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    fill_the_disk_for(monkeypatch, "metrics.json")
    assert main(["train", "--out", str(run), "--epochs", "1", "--set", *TINY]) == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    assert (f"cannot write {RunDir(run).metrics}: No space left on device; the trained model is kept in {run}; "
            f"write the outputs again with: clusterclr train --resume {run}\n") in error
    monkeypatch.undo()

    assert main(["train", "--resume", str(run)]) == 0  # evaluates and writes, without training again
    assert json.loads(RunDir(run).metrics.read_text())["epoch"] == 1
    assert [r["epoch"] for r in map(json.loads, RunDir(run).log.read_text().splitlines()) if r["kind"] == "epoch"] == [1]


def test_an_unwritable_run_directory_is_refused_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    assert main(["train", "--out", str(blocker), "--set", *TINY]) == 2
    assert f"{blocker} is a file, not a run directory" in capsys.readouterr().err
    assert main(["train", "--out", str(blocker / "run"), "--set", *TINY]) == 2
    assert f"cannot write to run directory {blocker / 'run'}: Not a directory" in capsys.readouterr().err
    assert blocker.read_text() == "not a directory"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes to read-only directories anyway")
def test_a_read_only_run_directory_is_refused(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert main(["train", "--out", str(locked / "run"), "--set", *TINY]) == 2
    assert "Permission denied" in capsys.readouterr().err


# --- signals (real ones from another process: test_interrupt.py) ----------------------------------


def test_ctrl_c_stops_after_the_step_with_a_checkpoint_and_a_second_one_aborts(tmp_path, ctrl_c_at_step):
    ctrl_c_at_step(SimCLR, 3)
    run = tmp_path / "run"
    # Not necessarily the default handler: a shell's background job starts with SIGINT ignored.
    handler_before = signal.getsignal(signal.SIGINT)
    with pytest.raises(Interrupted, match=r"stopped by SIGINT at epoch 1, step 3 of 11; checkpoint written to") as stopped:
        clusterclr.train(tiny(1), out=run)
    assert stopped.value.exit_status == 130 and stopped.value.run_dir == run
    assert load_checkpoint(RunDir(run).checkpoint)["mid_epoch"]["step"] == 3
    assert signal.getsignal(signal.SIGINT) is handler_before  # handlers last only while training

    ctrl_c_at_step(SimCLR, 2, times=2)
    with pytest.raises(KeyboardInterrupt):
        clusterclr.train(tiny(1), out=tmp_path / "again")
    assert "mid_epoch" not in load_checkpoint(RunDir(tmp_path / "again").checkpoint)


# --- numerical faults ------------------------------------------------------------------------------


def poison_steps(monkeypatch, steps: set[int], output_std: float | None = None) -> None:
    """Make SimCLR's loss NaN at the given (1-based) steps, or report ``output_std`` at every step."""
    real = SimCLR.training_step
    calls = itertools.count(1)

    def training_step(self, batch):
        out = real(self, batch)
        logs = dict(out.logs)
        if output_std is not None:
            logs["output_std"] = torch.tensor(output_std)
        if next(calls) in steps:
            return StepOutput(out.loss * float("nan"), {**logs, "loss": torch.tensor(float("nan"))})
        return StepOutput(out.loss, logs)

    monkeypatch.setattr(SimCLR, "training_step", training_step)


def test_a_nan_loss_stops_the_run_naming_the_step_terms_and_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    poison_steps(monkeypatch, {5})
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--epochs", "1", "--set", *TINY]) == 1
    error = capsys.readouterr().err
    assert "Traceback" not in error
    assert "training diverged: loss became nan at step 5 (epoch 1); loss terms: loss=nan, output_std=" in error
    assert f"the last good checkpoint is {RunDir(run).checkpoint} (before training)" in error
    state = load_checkpoint(RunDir(run).checkpoint)
    assert state["epoch"] == 0 and all(torch.isfinite(v).all() for v in state["method"].values() if v.is_floating_point())


def test_a_nan_between_log_steps_is_caught_at_the_next_one(tmp_path, monkeypatch):
    poison_steps(monkeypatch, {3})
    # The weights are NaN from step 3 on, so the loss checked at step 5 is too.
    with pytest.raises(FloatingPointError, match=r"loss became nan at step 5 \(epoch 1\)"):
        clusterclr.train(tiny(1, "train.log_every=5"), out=tmp_path / "run")


def test_up_to_skip_nonfinite_steps_bad_steps_are_skipped(tmp_path, monkeypatch):
    poison_steps(monkeypatch, {3, 7})
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match=r"loss became nan at step \d+ .*step skipped") as warned:
        clusterclr.train(tiny(1, "train.skip_nonfinite_steps=2", "train.log_every=100"), out=run)
    skipped = [str(w.message) for w in warned if "step skipped" in str(w.message)]
    assert [s.split(" (epoch")[0] for s in skipped] == ["loss became nan at step 3", "loss became nan at step 7"]
    state = load_checkpoint(RunDir(run).checkpoint)
    assert state["skipped_steps"] == 2
    assert all(torch.isfinite(v).all() for v in state["method"].values() if v.is_floating_point())

    poison_steps(monkeypatch, {2, 4, 6})
    with pytest.warns(UserWarning), pytest.raises(FloatingPointError, match=r"step 6, non-finite step 3 \(train.skip_nonfinite_steps=2\)"):
        clusterclr.train(tiny(1, "train.skip_nonfinite_steps=2"), out=tmp_path / "again")


def test_collapsed_outputs_are_warned_about_once(tmp_path, monkeypatch):
    poison_steps(monkeypatch, set(), output_std=1e-5)
    with pytest.warns(UserWarning, match=r"outputs have collapsed at epoch 1: output_std=1e-05") as warned:
        clusterclr.train(tiny(2), out=tmp_path / "run")
    assert sum("collapsed" in str(w.message) for w in warned) == 1


# --- untrusted and mismatched checkpoints ----------------------------------------------------------


class Payload:
    """Unpickling this creates ``marker``: proof that code in a checkpoint ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


@pytest.mark.parametrize("form", ["zip", "legacy", "plain pickle"])
def test_a_malicious_pickle_is_refused_without_running_it(run, tmp_path, capsys, form):
    marker = tmp_path / "pwned"
    last = RunDir(run).checkpoint
    state = load_checkpoint(last)
    state["epoch"] = Payload(marker)
    if form == "plain pickle":
        last.write_bytes(pickle.dumps(state, protocol=4))
    else:
        torch.save(state, last, _use_new_zipfile_serialization=form == "zip")
    previous_checkpoint(last).unlink()  # no fallback: the hostile file is the only one
    # The payload is live: an unrestricted load runs it.
    if form == "plain pickle":
        pickle.loads(last.read_bytes())
    else:
        torch.load(last, weights_only=False)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(UserError, match=r"refused; nothing in it was run"):
        load_checkpoint(last)
    for command in (["evaluate", str(run)], ["train", "--resume", str(run)], ["embed", str(run), "--out", str(tmp_path / "e.npy")]):
        assert main(command) == 2
        assert "holds more than tensors and plain data" in capsys.readouterr().err
    assert not marker.exists()


def test_a_checkpoint_that_does_not_match_its_config_names_the_mismatch(run, capsys):
    last = RunDir(run).checkpoint
    state = load_checkpoint(last)
    state["config"]["model"]["width"] = 0.25  # the config now builds a model twice as wide as the weights
    torch.save(state, last)
    with pytest.raises(UserError, match=r"backbone.stem.0.weight is \(8, 1, 3, 3\) in the checkpoint but \(16, 1, 3, 3\) in the model"):
        load_model(RunDir(run))

    state = load_checkpoint(previous_checkpoint(last))
    weights = state["method"]
    del weights["projector.0.weight"]
    weights["extra.bias"] = torch.zeros(3)
    torch.save(state, last)
    assert main(["train", "--resume", str(run)]) == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    assert "do not match the simclr model its config builds: missing projector.0.weight; unexpected extra.bias" in error


def test_resuming_on_changed_data_is_refused(tmp_path):
    data = tmp_path / "data.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.integers(0, 256, (48, 8, 8), dtype=np.uint8), y=np.arange(48) % 3)
    config = build_config(
        flags={"data.dataset": "npz", "data.root": str(data), "train.epochs": 1}, overrides=TINY + ["optim.batch_size=16"]
    )
    clusterclr.train(config, out=tmp_path / "run")
    np.savez(data, x=rng.integers(0, 256, (40, 8, 8), dtype=np.uint8), y=np.arange(40) % 3)
    with pytest.raises(UserError, match=r"the training data changed since .*last.pt was written \(num_images 39 -> 31\)"):
        clusterclr.resume(tmp_path / "run")


# --- --resume auto ---------------------------------------------------------------------------------


def test_resume_auto(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--resume", "auto"]) == 2
    assert "found no run under runs/" in capsys.readouterr().err

    # With --out: the first launch starts the run, every later one continues it.
    command = ["train", "--resume", "auto", "--out", "runs/a", "--epochs", "1", "--set", *TINY]
    assert main(command) == 0
    assert "training simclr on digits -> runs/a" in capsys.readouterr().err
    assert main(command) == 0
    assert "resuming runs/a" in capsys.readouterr().err
    assert main([*command[:-len(TINY) - 3], "--epochs", "2", "--set", *TINY]) == 2
    assert "runs/a holds a run with a different config (train.epochs)" in capsys.readouterr().err

    # Without --out: the run whose checkpoint is newest.
    shutil.copytree("runs/a", "runs/b")
    os.utime("runs/a/checkpoints/last.pt")
    assert main(["train", "--resume", "auto"]) == 0
    assert "resuming runs/a" in capsys.readouterr().err
    assert main(["train", "--resume", "auto", "--epochs", "3"]) == 2
    assert "drop --config, --set and the other flags" in capsys.readouterr().err


def test_a_resumed_log_keeps_exactly_the_lines_before_its_checkpoint(tmp_path):
    from clusterclr.runlog import RunLog, read_log

    def log_two_epochs_then_resume(keep_until_step: int, epoch_start_redone: bool) -> list[tuple[str, int]]:
        (tmp_path / "metrics.jsonl").unlink(missing_ok=True)
        log = RunLog(RunDir(tmp_path).log, RunDir(tmp_path).tensorboard)
        for epoch, start in ((0, 0), (1, 10)):
            log.write("method", start, {"epoch": epoch})
            for step in range(start + 1, start + 11):
                log.write("step", step, {})
            log.write("epoch", start + 10, {"epoch": epoch + 1})
        log.close()
        RunLog(RunDir(tmp_path).log, RunDir(tmp_path).tensorboard, keep_until_step, epoch_start_redone).close()
        return [(r["kind"], r["step"]) for r in read_log(RunDir(tmp_path).log)]

    first_epoch = [("method", 0), *(("step", s) for s in range(1, 11)), ("epoch", 10)]
    # Resumed at the epoch boundary: the second epoch's start (its "method" line) is redone.
    assert log_two_epochs_then_resume(10, True) == first_epoch
    # Resumed mid-epoch, at step 4 or step 0 of the second epoch: its start is not redone, so its line stays.
    assert log_two_epochs_then_resume(14, False) == [*first_epoch, ("method", 10), *(("step", s) for s in range(11, 15))]
    assert log_two_epochs_then_resume(10, False) == [*first_epoch, ("method", 10)]
