"""The command line as a user meets it: one-line errors, no tracebacks."""

import subprocess
import sys

import pytest

from clusterclr.methods.registry import method_summaries


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clusterclr", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--set", "optim.lrr=0.1"], "unknown key 'optim.lrr'"),
        (["train", "--dataset", "cifar10", "--data-root", "/no/such/dir"], "/no/such/dir"),
        (["train", "--method", "nope"], "unknown method 'nope'"),
        (["evaluate", "/no/such/run"], "/no/such/run"),
        (["train", "--seed", "4294967296"], "'seed'"),
        (["train", "--set", "clusters=5000"], "cannot make 5000 clusters"),
        (["train", "--set", "optim.batch_size=100000"], "fewer than optim.batch_size"),
        (["embed", "/no/such/run", "--out", "x.npy", "--data-root", "somewhere"], "--data-root needs --dataset"),
        (["train", "--minutes", "5", "--epochs", "3"], "--minutes sets a new run's training budget"),
        (["train", "--minutes", "0"], "--minutes sets a new run's training budget"),
        (["train", "--minutes", "5", "--resume", "auto"], "--minutes sets a new run's training budget"),
    ],
)
def test_bad_input_gives_one_line_error(args, message, tmp_path):
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("clusterclr: error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr


def test_empty_folder_is_a_clear_error(tmp_path):
    empty = tmp_path / "photos"
    empty.mkdir()
    result = run_cli("train", "--dataset", "folder", "--data-root", str(empty), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert str(empty) in result.stderr and "clusterclr: error:" in result.stderr


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    result = run_cli("train", "--resume", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "no checkpoint at" in result.stderr


def test_resume_refuses_conflicting_flags(tmp_path):
    result = run_cli("train", "--resume", str(tmp_path), "--epochs", "3", cwd=tmp_path)
    assert result.returncode == 2 and "--resume continues a run" in result.stderr


def test_methods_and_datasets_are_listed():
    methods = run_cli("methods")
    assert methods.returncode == 0
    listed = [line.split()[0] for line in methods.stdout.splitlines()]
    assert listed == sorted(method_summaries())
    assert {"simclr", "moco_v2", "simsiam", "byol", "center_predictor", "cc"} <= set(listed)
    datasets = run_cli("datasets").stdout
    for name in ("digits", "cifar10", "cifar100", "stl10", "mnist", "fashion-mnist", "folder", "npz"):
        assert name in datasets
