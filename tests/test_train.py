import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

import clusterclr
from clusterclr.cli import main
from clusterclr.configure import build_config
from clusterclr.errors import UserError
from clusterclr.rundir import RunDir
from clusterclr.runlog import read_log

TINY = [
    "model.width=0.125",
    "optim.batch_size=128",
    "train.progress=false", "train.report=false",
    "train.eval_every=0",
    "train.checkpoint_every=1",
    "train.log_every=1",
    "method.projection_hidden_dim=64",
    "method.projection_dim=32",
]


def tiny_config(epochs: int, *extra: str):
    return build_config(flags={"train.epochs": epochs}, overrides=TINY + list(extra))


def step_losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_log(RunDir(run_dir).log) if r["kind"] == "step"]


def test_resumed_run_equals_uninterrupted_run(tmp_path, interrupt_after_epoch):
    config = tiny_config(3)
    whole = tmp_path / "whole"
    clusterclr.train(config, out=whole)

    interrupted = tmp_path / "interrupted"
    interrupt_after_epoch(config, interrupted, epoch=1)
    clusterclr.resume(interrupted)

    assert step_losses(interrupted) == step_losses(whole)
    a = torch.load(RunDir(whole).checkpoint, weights_only=True)["method"]
    b = torch.load(RunDir(interrupted).checkpoint, weights_only=True)["method"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((whole / "metrics.json").read_text()) == json.loads((interrupted / "metrics.json").read_text())


def two_epochs_and_a_clock_of_one_second_steps(tmp_path, monkeypatch):
    """A 2-epoch run to compare with, and its epoch's length in minutes once every measured step takes a second."""
    given = tmp_path / "epochs"
    clusterclr.train(tiny_config(2), out=given)
    steps_per_epoch = max(step for step, _ in step_losses(given)) // 2
    clock = iter(range(10**6))  # one second per reading
    monkeypatch.setattr("clusterclr.training.budget.time", SimpleNamespace(perf_counter=lambda: float(next(clock))))
    return given, steps_per_epoch / 60


def test_time_budget_trains_as_if_its_epochs_were_given(tmp_path, monkeypatch):
    given, epoch_minutes = two_epochs_and_a_clock_of_one_second_steps(tmp_path, monkeypatch)
    budgeted = tmp_path / "minutes"
    clusterclr.train(tiny_config(99), out=budgeted, minutes=2.5 * epoch_minutes)

    assert RunDir(budgeted).read()[0].train.epochs == 2
    assert yaml.safe_load((budgeted / "config.yaml").read_text())["train"]["epochs"] == 2
    assert step_losses(budgeted) == step_losses(given)  # measuring left no trace in the weights or the random state
    a = torch.load(RunDir(given).checkpoint, weights_only=True)["method"]
    b = torch.load(RunDir(budgeted).checkpoint, weights_only=True)["method"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_time_cap_cuts_the_epochs_to_what_fits_and_trains_as_if_they_were_given(tmp_path, monkeypatch, capsys):
    given, epoch_minutes = two_epochs_and_a_clock_of_one_second_steps(tmp_path, monkeypatch)
    capped = tmp_path / "capped"
    clusterclr.train(tiny_config(99, f"train.max_minutes={2.5 * epoch_minutes}"), out=capped)
    assert RunDir(capped).read()[0].train.epochs == 2
    assert "99 epochs would take about" in capsys.readouterr().err
    assert step_losses(capped) == step_losses(given)
    # A cap the epochs fit in changes nothing, and says nothing.
    clusterclr.train(tiny_config(2, "train.max_minutes=60"), out=tmp_path / "uncut")
    assert RunDir(tmp_path / "uncut").read()[0].train.epochs == 2 and capsys.readouterr().err == ""
    assert step_losses(tmp_path / "uncut") == step_losses(given)


def test_time_budget_that_is_not_positive_is_refused_before_the_run_starts(tmp_path):
    with pytest.raises(UserError, match="a positive number"):
        clusterclr.train(tiny_config(2), out=tmp_path / "run", minutes=0)
    assert not (tmp_path / "run").exists()


def test_short_run_learns_and_writes_everything(tmp_path):
    run = tmp_path / "run"
    metrics = clusterclr.train(tiny_config(8, "train.eval_every=4"), out=run).metrics
    for key in ("knn_acc", "kmeans_nmi", "kmeans_acc", "kmeans_ari"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["eval_split"] == "holdout"
    epochs = [r for r in read_log(RunDir(run).log) if r["kind"] == "epoch"]
    assert len(epochs) == 8
    assert epochs[-1]["loss"] < epochs[0]["loss"]
    steps = [r for r in read_log(RunDir(run).log) if r["kind"] == "step"]
    assert all(r["output_std"] > 0.3 / math.sqrt(32) for r in steps)  # not collapsed
    assert [r["epoch"] for r in read_log(RunDir(run).log) if r["kind"] == "eval"] == [4, 8]
    assert (run / "config.yaml").is_file() and (RunDir(run).checkpoint).is_file()
    assert any((run / "tensorboard").iterdir())
    assert json.loads((run / "metrics.json").read_text())["knn_acc"] == metrics["knn_acc"]
    # Far above chance (0.1): eight epochs of SimCLR already separate digits.
    assert metrics["knn_acc"] > 0.6


def test_existing_run_is_never_overwritten(tmp_path):
    run = tmp_path / "run"
    clusterclr.train(tiny_config(1), out=run)
    with pytest.raises(Exception, match="already holds a run"):
        clusterclr.train(tiny_config(1), out=run)


def test_evaluate_and_embed_commands(tmp_path, capsys):
    run = tmp_path / "run"
    clusterclr.train(tiny_config(1), out=run)
    first = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").unlink()
    assert main(["evaluate", str(run)]) == 0
    assert json.loads((run / "metrics.json").read_text()) == first
    assert "kmeans_nmi" in capsys.readouterr().out

    out = tmp_path / "emb.npy"
    assert main(["embed", str(run), "--out", str(out)]) == 0
    features = np.load(out)
    assert features.shape == (1797, 64) and features.dtype == np.float32
    lines = out.with_suffix(".csv").read_text().splitlines()
    assert lines[0] == "split,index,source,label,cluster"
    rows = [line.split(",") for line in lines[1:]]
    # Rows follow the data set's own order, so index and label line up with load_digits().
    from sklearn.datasets import load_digits

    assert [int(r[1]) for r in rows] == list(range(1797))
    assert [int(r[3]) for r in rows] == load_digits().target.tolist()
    clusters = {int(r[4]) for r in rows}
    assert clusters <= set(range(10)) and len(clusters) > 1

    assert main(["embed", str(run), "--out", str(out), "--clusters", "0"]) == 2
    assert main(["embed", str(run), "--out", str(out), "--clusters", "5000"]) == 2
    assert main(["embed", str(run), "--out", str(out), "--split", "test"]) == 2  # digits has no test split
    assert "cannot make 5000 clusters" in capsys.readouterr().err


def test_unlabelled_folder_end_to_end(tmp_path):
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    generator = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(generator.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(photos / f"img_{i:02d}.png")
    run = tmp_path / "run"
    config = build_config(
        flags={"data.dataset": "folder", "data.root": str(photos), "train.epochs": 1},
        overrides=TINY + ["data.image_size=16", "optim.batch_size=16", "clusters=3"],
    )
    metrics = clusterclr.train(config, out=run).metrics
    assert metrics["eval_split"] == "train" and metrics["num_train"] == 40  # nothing held back
    assert metrics["knn_acc"] is None and metrics["kmeans_nmi"] is None
    out = tmp_path / "e.npy"
    assert main(["embed", str(run), "--out", str(out)]) == 0
    rows = out.with_suffix(".csv").read_text().splitlines()[1:]
    assert len(rows) == 40 and rows[0].split(",")[2].endswith("img_00.png")
    assert {int(r.split(",")[4]) for r in rows} <= {0, 1, 2}


def test_reloaded_runs_normalise_as_the_checkpoint_says(tmp_path):
    from clusterclr.build import load_model, load_parts

    run = tmp_path / "run"
    clusterclr.train(tiny_config(1), out=run)
    state = torch.load(RunDir(run).checkpoint, weights_only=True)
    state["normalisation"] = {"mean": [0.25], "std": [0.5]}
    torch.save(state, RunDir(run).checkpoint)
    for model in (load_parts(RunDir(run))[0], load_model(RunDir(run))[0]):
        assert model.views.mean.flatten().tolist() == [0.25] and model.views.std.flatten().tolist() == [0.5]
