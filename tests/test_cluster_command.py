"""``clusterclr cluster`` and ``assign`` on a folder of real images (written from the shared CIFAR-10 rows)."""

import csv
import errno
import hashlib
import io
import json
import os
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clusterclr import io as clusterclr_io
from clusterclr.arguments import build_parser
from clusterclr.cli import main
from clusterclr.commands.cluster import (
    DEFAULT_MINUTES, IMAGES_SEEN, MAX_EPOCHS, MIN_EPOCHS, ClusterRequest, check_request, cluster_config,
)
from clusterclr.data.cifar import load_cifar10
from clusterclr.methods.simclr import SimCLR
from clusterclr.rundir import RunDir

SHARED_CIFAR10 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar-10-batches-py"
pytestmark = pytest.mark.skipif(
    not SHARED_CIFAR10.is_dir() and not os.environ.get("CI"),
    reason=f"shared CIFAR-10 subset not found at {SHARED_CIFAR10} (required under CI)",
)

IMAGES = 60
HOSTILE = ["<script>alert(1).png", "a\"b'c&d.png", "x<img src=x onerror=alert(2)>.png"]
FAST = ["model.width=0.125", "data.image_size=32", "method.projection_hidden_dim=32", "method.projection_dim=16"]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_csv(path_or_text) -> list[dict[str, str]]:
    text = path_or_text.read_text(encoding="utf-8") if isinstance(path_or_text, Path) else path_or_text
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture(scope="module")
def clustered(tmp_path_factory):
    """One `cluster` run over 60 CIFAR-10 images, three of them with hostile names, in a hostile-named folder."""
    base = tmp_path_factory.mktemp("cluster")
    folder = base / 'photos <i>&"q"'
    folder.mkdir()
    train = load_cifar10(SHARED_CIFAR10).train
    names = [f"img{i:03d}.png" for i in range(IMAGES - len(HOSTILE))] + HOSTILE
    for i, name in enumerate(names):
        Image.fromarray(train.images[i].numpy().transpose(1, 2, 0)).save(folder / name)
    digests = {name: _digest(folder / name) for name in names}
    run, copies = base / "run", base / "copies"
    status = main([
        "cluster", str(folder), "--clusters", "3", "--epochs", "2", "--out", str(run), "--copy-to", str(copies),
        "--set", *FAST, "train.progress=false",
    ])
    assert status == 0
    return folder, names, digests, run, copies


def test_csv_names_every_image_exactly_once(clustered):
    folder, names, _, run, _ = clustered
    rows = _read_csv(run / "clusters.csv")
    assert sorted(row["path"] for row in rows) == sorted(str(folder / name) for name in names)
    assert {int(row["cluster"]) for row in rows} <= {0, 1, 2}
    assert all(-1.0 <= float(row["confidence"]) <= 1.0 for row in rows)
    embeddings = np.load(run / "embeddings.npy")
    assert embeddings.shape == (IMAGES, 64) and np.isfinite(embeddings).all()
    assert np.load(RunDir(run).centroids).shape == (3, 64)


def test_copy_to_copies_every_image_and_leaves_the_originals_alone(clustered):
    folder, names, digests, run, copies = clustered
    assert {name: _digest(folder / name) for name in names} == digests
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)  # nothing added to the input folder
    copied = {p.name: p for p in copies.rglob("*") if p.is_file()}
    assert sorted(copied) == sorted(names)
    for row in _read_csv(run / "clusters.csv"):
        name = Path(row["path"]).name
        assert copied[name].parent.name == f"cluster_{row['cluster']}"
        assert _digest(copied[name]) == digests[name]


def test_report_shows_hostile_names_as_text(clustered):
    folder, _, _, run, _ = clustered
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "<script>" not in page and "onerror=alert(2)>" not in page and "<i>" not in page
    assert "photos &lt;i&gt;&amp;&quot;q&quot;" in page  # the folder name, in the title and settings

    tags = []
    parser = HTMLParser()
    parser.handle_starttag = lambda tag, attrs: tags.append(tag)
    parser.feed(page)
    assert tags and "script" not in tags and "i" not in tags
    assert (run / "report" / "map_clusters.png").is_file() and (run / "report" / "gallery.png").is_file()


def test_assign_puts_the_training_images_in_their_clusters(clustered, capsys):
    folder, names, _, run, _ = clustered
    expected = {row["path"]: (row["cluster"], row["confidence"]) for row in _read_csv(run / "clusters.csv")}
    capsys.readouterr()
    assert main(["assign", str(run), str(folder)]) == 0
    assigned = {row["path"]: (row["cluster"], row["confidence"]) for row in _read_csv(capsys.readouterr().out)}
    assert assigned == expected
    # A single file, written to a CSV file.
    out = run.parent / "one.csv"
    assert main(["assign", str(run), str(folder / HOSTILE[0]), "--out", str(out)]) == 0
    [row] = _read_csv(out)
    assert (row["cluster"], row["confidence"]) == expected[str(folder / HOSTILE[0])]


def test_init_starts_from_the_given_runs_backbone(clustered, tmp_path):
    folder, _, _, run, _ = clustered
    again = tmp_path / "again"
    assert main(["cluster", str(folder), "--clusters", "3", "--init", str(run), "--epochs", "0", "--out", str(again),
                 "--set", *FAST, "train.progress=false"]) == 0
    before = torch.load(RunDir(run).checkpoint, weights_only=True)["method"]
    after = torch.load(RunDir(again).checkpoint, weights_only=True)["method"]
    backbone = [key for key in before if key.startswith("backbone.")]
    assert backbone and all(torch.equal(before[key], after[key]) for key in backbone)
    # Zero epochs from the same weights: the same features, so the same clusters.
    assert _read_csv(again / "clusters.csv") == _read_csv(run / "clusters.csv")


def test_a_method_with_a_cluster_head_assigns_by_its_head(clustered, tmp_path, capsys):
    folder, _, _, _, _ = clustered
    run = tmp_path / "cc"
    assert main(["cluster", str(folder), "--clusters", "4", "--method", "cc", "--epochs", "1", "--out", str(run),
                 "--set", *FAST, "method.cluster_hidden_dim=32", "train.progress=false"]) == 0
    assert "by cluster head" in capsys.readouterr().out
    rows = _read_csv(run / "clusters.csv")
    assert len(rows) == IMAGES and all(0.25 <= float(row["confidence"]) <= 1.0 for row in rows)  # max of 4 probabilities
    assert main(["assign", str(run), str(folder)]) == 0
    assert _read_csv(capsys.readouterr().out) == rows


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["cluster", "{empty}", "--clusters", "3"], "no image files"),
        (["cluster", "{folder}", "--clusters", "1"], "--clusters must be at least 2"),
        (["cluster", "{folder}", "--clusters", "61"], "more than the 60 images"),
        (["cluster", "{tmp}/missing", "--clusters", "3"], "image folder not found"),
        (["cluster", "{folder}", "--clusters", "3", "--init", "{tmp}/no_run"], "run directory not found"),
        (["cluster", "{folder}", "--clusters", "3", "--copy-to", "{folder}/sorted"], "inside the image folder"),
        (["cluster", "{folder}", "--clusters", "3", "--copy-to", "{full}"], "not an empty folder"),
        (["cluster", "{folder}", "--clusters", "3", "--out", "{folder}/run"], "inside the image folder"),
        (["assign", "{tmp}/no_run", "{folder}"], "run directory not found"),
        (["assign", "{run}", "{tmp}/missing.png"], "image or folder not found"),
        (["assign", "{run}", "{empty}"], "no image files"),
    ],
)
def test_bad_input_is_a_one_line_error_before_any_work(arguments, message, clustered, tmp_path, capsys):
    folder, _, _, run, _ = clustered
    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    places = {"empty": tmp_path / "empty", "folder": folder, "tmp": tmp_path, "full": tmp_path / "full", "run": run}
    capsys.readouterr()
    assert main([a.format(**places) for a in arguments]) == 2
    err = capsys.readouterr().err
    assert err.count("clusterclr: error:") == 1 and message in err, err
    assert not (folder / "sorted").exists() and not (folder / "run").exists()
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_an_interrupted_cluster_run_is_finished_by_resume(clustered, tmp_path, monkeypatch, ctrl_c_at_step, capsys):
    folder, names, _, _, _ = clustered
    run = tmp_path / "run"
    ctrl_c_at_step(SimCLR, 3)  # two steps an epoch: the first step of epoch 2
    arguments = ["cluster", str(folder), "--clusters", "3", "--epochs", "2", "--out", str(run), "--set", *FAST, "train.progress=false"]
    assert main(arguments) == 130
    assert f"continue with: clusterclr cluster --resume {run}" in capsys.readouterr().err
    assert not (run / "clusters.csv").exists()
    stopped_at = torch.load(RunDir(run).checkpoint, weights_only=True)["mid_epoch"]["step"]
    monkeypatch.undo()

    assert main(["cluster", "--resume", str(run), "--clusters", "3"]) == 2
    assert "drop --clusters" in capsys.readouterr().err
    assert main(["cluster", "--resume", str(run), "--copy-to", str(tmp_path / "copies")]) == 0
    assert sorted(Path(row["path"]).name for row in _read_csv(run / "clusters.csv")) == sorted(names)
    assert len(list((tmp_path / "copies").glob("cluster_*/*"))) == IMAGES
    # Training went on from the mid-epoch checkpoint to the last epoch.
    assert stopped_at == 1
    epochs = [r["epoch"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "epoch"]
    assert epochs == [1, 2]


def test_resume_refuses_a_run_that_cluster_did_not_make(tmp_path, capsys):
    run = tmp_path / "digits"
    assert main(["train", "--out", str(run), "--set", "train.epochs=1", *FAST[:1], "train.progress=false", "train.report=false"]) == 0
    assert main(["cluster", "--resume", str(run)]) == 2
    assert f"continue it with: clusterclr train --resume {run}" in capsys.readouterr().err


def _raises(error: Exception):
    def fail(*args, **kwargs):
        raise error

    return fail


def _fail_writing(path: Path, monkeypatch) -> None:
    """Writes of ``path`` through clusterclr.io fail as a full disk makes them fail."""
    real = clusterclr_io.atomic_write

    def failing(target, write, keep_previous=None):
        if Path(target) == path:
            write = _raises(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        return real(target, write, keep_previous)

    monkeypatch.setattr(clusterclr_io, "atomic_write", failing)


def test_an_output_that_cannot_be_written_names_itself_and_the_command_that_writes_it_again(clustered, tmp_path, monkeypatch, capsys):
    folder, names, _, run, _ = clustered
    again = tmp_path / "again"
    arguments = ["cluster", str(folder), "--clusters", "3", "--init", str(run), "--epochs", "1", "--out", str(again),
                 "--set", *FAST, "train.progress=false"]
    _fail_writing(RunDir(again).clusters_csv, monkeypatch)
    assert main(arguments) == 2
    err = capsys.readouterr().err
    assert f"cannot write {again / 'clusters.csv'}: No space left on device" in err, err
    assert f"the trained model is kept in {again}; write the outputs again with: clusterclr cluster --resume {again}\n" in err
    assert not (again / "clusters.csv").exists()
    trained = torch.load(RunDir(again).checkpoint, weights_only=True)
    monkeypatch.undo()

    # The named command writes every output from the finished run, without training again.
    assert main(["cluster", "--resume", str(again)]) == 0
    assert sorted(Path(row["path"]).name for row in _read_csv(again / "clusters.csv")) == sorted(names)
    assert (again / "report.html").is_file() and (again / "embeddings.npy").is_file()
    after = torch.load(RunDir(again).checkpoint, weights_only=True)
    assert after["epoch"] == trained["epoch"] == 1
    assert all(torch.equal(after["method"][key], value) for key, value in trained["method"].items())
    epochs = [r["epoch"] for r in map(json.loads, (again / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "epoch"]
    assert epochs == [1]

    # Any other failure (here a bug in the report) names the output too; the run stays finished.
    monkeypatch.setattr("clusterclr.commands.cluster.write_report", _raises(ValueError("boom")))
    assert main(["cluster", "--resume", str(again)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {again / 'report.html'}: ValueError: boom; the trained model is kept in {again}" in err
    assert f"write the outputs again with: clusterclr cluster --resume {again}\n" in err


def test_a_copy_cut_short_is_undone_and_named_with_the_command_that_copies_again(clustered, tmp_path, monkeypatch, capsys):
    from clusterclr.commands import copies as copies_module

    folder, names, digests, run, _ = clustered
    again, copies = tmp_path / "again", tmp_path / "sorted photos"
    assert main(["cluster", str(folder), "--clusters", "3", "--init", str(run), "--epochs", "0", "--out", str(again),
                 "--set", *FAST, "train.progress=false"]) == 0
    calls = []
    real_copy = copies_module.shutil.copy2

    def copy_then_fill_the_disk(source, destination):
        calls.append(destination)
        if len(calls) == 5:
            Path(destination).write_bytes(b"half a file")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_copy(source, destination)

    monkeypatch.setattr(copies_module.shutil, "copy2", copy_then_fill_the_disk)
    capsys.readouterr()
    assert main(["cluster", "--resume", str(again), "--copy-to", str(copies)]) == 2
    err = capsys.readouterr().err
    assert f"to {calls[-1]}: No space left on device" in err
    assert f"write the outputs again with: clusterclr cluster --resume {again} --copy-to '{copies}'\n" in err
    assert not copies.exists()  # made by the copy, so removed with what was copied into it
    monkeypatch.undo()

    assert main(["cluster", "--resume", str(again), "--copy-to", str(copies)]) == 0
    copied = {p.name: p for p in copies.rglob("*") if p.is_file()}
    assert sorted(copied) == sorted(names) and {name: _digest(p) for name, p in copied.items()} == digests


@pytest.mark.parametrize(("images", "given", "epochs"), [(12, None, 300), (1000, None, 300), (2000, None, 150), (5000, None, 100), (12, 5, 5)])
def test_default_training_sees_about_300000_images_in_100_to_300_epochs_within_10_minutes_at_the_images_own_size(
    images, given, epochs, tmp_path
):
    folder = tmp_path / "photos"
    folder.mkdir()
    noise = np.random.default_rng(0).integers(0, 256, (12, 28, 30, 3), dtype=np.uint8)
    for i, pixels in enumerate(noise):
        Image.fromarray(pixels).save(folder / f"{i}.png")
    request = ClusterRequest(folder=folder, clusters=3, out=RunDir(tmp_path / "run"), epochs=given)
    assert check_request(request) == 12
    config = cluster_config(request, images)
    assert config.train.epochs == epochs
    assert config.train.max_minutes == (DEFAULT_MINUTES if given is None else None)  # the user's epochs are not cut
    assert cluster_config(ClusterRequest(folder=folder, clusters=3, out=request.out, minutes=5), images).train.max_minutes is None
    assert config.data.image_size == 28  # the shorter side, never upsampled to 64
    assert config.optim.batch_size == min(256, images // 2)


def test_the_epochs_help_states_the_commands_own_default(capsys):
    # arguments.py imports nothing heavy, so it spells the numbers out: this keeps them the command's.
    with pytest.raises(SystemExit):
        build_parser().parse_args(["cluster", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert (f"default: {MIN_EPOCHS}, more for a small folder to see about {IMAGES_SEEN:,} images, up to {MAX_EPOCHS}, "
            f"and no more than fit in {DEFAULT_MINUTES:g} minutes here;") in text
