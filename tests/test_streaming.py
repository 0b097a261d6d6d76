"""Streamed data (folders and tar shards read by DataLoader workers) keeps every guarantee of the in-memory path."""

from __future__ import annotations

import csv
import json
import tarfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import clusterclr
from clusterclr.build import build_parts, training_batches
from clusterclr.cli import main
from clusterclr.configure import build_config
from clusterclr.data import index as folder_index
from clusterclr.data.crops import crop_box, crop_generator
from clusterclr.data.folder import image_paths
from clusterclr.data.registry import load_raw
from clusterclr.data.streamed import StreamedImages
from clusterclr.errors import Interrupted, UserError
from clusterclr.io import load_checkpoint
from clusterclr.rundir import RunDir
from clusterclr.runlog import read_log
from clusterclr.training.loop import Trainer

TINY = [
    "model.width=0.125", "optim.batch_size=8", "train.progress=false", "train.report=false", "train.eval_every=0",
    "train.checkpoint_every=100", "train.log_every=1", "method.projection_hidden_dim=16", "method.projection_dim=8",
    "data.image_size=16", "data.workers=0", "train.num_threads=1", "train.device=cpu", "train.precision=fp32",
]
# Whole images as crops, no other random step: streamed and in-memory views are then the same pixels.
WHOLE = ["augment.crop_scale=[1,1]", "augment.crop_ratio=[1,1]", "augment.flip_prob=0", "augment.jitter_prob=0",
         "augment.grayscale_prob=0"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTERCLR_CACHE", str(tmp_path / "cache"))


def write_folder(root: Path, per_class: int, side: int = 16, classes: tuple[str, ...] = ("a", "b"), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(root / name / f"{i:03d}.png")
    return root


def config(root: Path, *extra: str, epochs: int = 2, dataset: str = "folder"):
    return build_config(flags={"data.dataset": dataset, "data.root": str(root), "train.epochs": epochs}, overrides=TINY + list(extra))


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(RunDir(run_dir).checkpoint)["method"]


def step_losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_log(RunDir(run_dir).log) if r["kind"] == "step"]


def test_streamed_training_equals_in_memory_training_where_the_crops_are_whole_images(tmp_path):
    # SePP mines partners over the clean training images every epoch and orders epochs so they meet:
    # the streamed pass over the training set and the partner-adjacent order are both exercised.
    root = write_folder(tmp_path / "photos", 24)
    runs = {}
    for stream in ("false", "true"):
        extra = [f"data.stream={stream}", "method.name=sepp_simclr", "positives.warmup_epochs=0", "positives.refresh_every=1"]
        run = clusterclr.train(config(root, *WHOLE, *extra), out=tmp_path / stream)
        runs[stream] = run
    assert isinstance(build_parts(config(root, "data.stream=true")).splits.train.images, StreamedImages)
    assert step_losses(tmp_path / "true") == step_losses(tmp_path / "false") and len(step_losses(tmp_path / "true")) == 8
    memory, streamed = weights(tmp_path / "false"), weights(tmp_path / "true")
    assert all(torch.equal(memory[key], streamed[key]) for key in memory)
    assert runs["true"].metrics["knn_acc"] == runs["false"].metrics["knn_acc"]


def test_workers_make_the_same_batches_as_the_training_process_and_cover_each_image_once(tmp_path):
    root = write_folder(tmp_path / "photos", 12)
    parts = build_parts(config(root, "data.stream=true", "augment.crop_scale=[0.2,1]"))
    order = torch.randperm(len(parts.splits.train), generator=torch.Generator().manual_seed(0))  # 20: 4 held out
    alone = list(training_batches(parts).batches(order, epoch=3))
    parts.splits.train.images.workers = 2
    with_workers = list(training_batches(parts).batches(order, epoch=3))
    assert len(alone) == 2 and [b.crops.shape for b in alone] == [(2, 8, 3, 16, 16)] * 2
    for a, b in zip(alone, with_workers):
        assert torch.equal(a.indices, b.indices) and torch.equal(a.crops, b.crops)
    assert torch.equal(torch.cat([b.indices for b in alone]), order[:16])
    assert not torch.equal(alone[0].crops[0], alone[0].crops[1])  # two views, two crops
    later = list(training_batches(parts).batches(order, epoch=3, start_step=1))
    assert len(later) == 1 and torch.equal(later[0].crops, alone[1].crops)  # a resumed epoch needs no worker state


def test_a_crop_is_a_pure_function_of_seed_epoch_image_and_view():
    boxes = [crop_box(200, 100, (0.08, 1.0), (3 / 4, 4 / 3), crop_generator(0, 1, 7, view)) for view in (0, 0, 1)]
    assert boxes[0] == boxes[1] != boxes[2]
    for left, top, right, bottom in boxes:
        assert 0 <= left < right <= 200 and 0 <= top < bottom <= 100
        assert 0.08 * 20000 * 0.9 <= (right - left) * (bottom - top) <= 20000
        assert 3 / 4 * 0.9 <= (right - left) / (bottom - top) <= 4 / 3 * 1.1
    assert crop_box(16, 16, (1, 1), (1, 1), crop_generator(0, 0, 0, 0)) == (0, 0, 16, 16)
    assert crop_box(30, 10, (1, 1), (1, 1), crop_generator(0, 0, 0, 0)) == (10, 0, 20, 10)  # central square fallback


def _peak_bytes(root: Path, *extra: str) -> int:
    """Peak traced allocations while loading the data, building a run and drawing one epoch of batches."""
    tracemalloc.start()
    try:
        parts = build_parts(config(root, *extra))
        for _ in training_batches(parts).batches(torch.randperm(len(parts.splits.train)), epoch=0):
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_flat_as_a_folder_larger_than_the_budget_grows(tmp_path):
    small, large = write_folder(tmp_path / "small", 40, side=64), write_folder(tmp_path / "large", 200, side=64)
    decoded_growth = (400 - 80) * 3 * 64 * 64  # what holding the extra images decoded costs
    budget = ["data.image_size=64", "data.memory_limit=100KB"]  # both folders decode to more than this
    _peak_bytes(small, *budget)  # first use: lazy imports and caches, not the data
    streamed = _peak_bytes(large, *budget) - _peak_bytes(small, *budget)
    in_memory = _peak_bytes(large, *budget, "data.stream=false") - _peak_bytes(small, *budget, "data.stream=false")
    assert in_memory > decoded_growth  # the measure sees a decoded set grow
    assert streamed < 0.1 * decoded_growth


def _stop_after(step_to_stop: int):
    optimise = Trainer.optimise

    def stop(self, out, step):
        optimise(self, out, step)
        if step + 1 == step_to_stop:
            self.stop.signal = 15

    return stop


def test_a_streamed_run_stopped_mid_epoch_resumes_exactly(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "photos", 20)
    cfg = config(root, "data.stream=true", epochs=3)  # random crops, flips and colour: every draw must line up
    clusterclr.train(cfg, out=tmp_path / "whole")
    monkeypatch.setattr(Trainer, "optimise", _stop_after(6))  # epoch 2 of 3, step 2 of 4
    with pytest.raises(Interrupted):
        clusterclr.train(cfg, out=tmp_path / "stopped")
    assert load_checkpoint(RunDir(tmp_path / "stopped").checkpoint)["mid_epoch"]["step"] == 2
    monkeypatch.undo()
    monkeypatch.setenv("CLUSTERCLR_CACHE", str(tmp_path / "cache"))
    clusterclr.resume(tmp_path / "stopped")
    assert step_losses(tmp_path / "stopped") == step_losses(tmp_path / "whole")
    whole, resumed = weights(tmp_path / "whole"), weights(tmp_path / "stopped")
    assert all(torch.equal(whole[key], resumed[key]) for key in whole)


def test_a_corrupt_file_met_mid_epoch_stops_with_its_name_and_a_checkpoint_or_is_skipped(tmp_path):
    root = write_folder(tmp_path / "photos", 20)
    bad = root / "b" / "007.png"
    good = bad.read_bytes()
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(UserError, match=rf"{bad}: not an image .*, met at epoch 1, step \d of 4; checkpoint written"):
        clusterclr.train(config(root, "data.stream=true"), out=tmp_path / "stopped")
    state = load_checkpoint(RunDir(tmp_path / "stopped").checkpoint)
    assert state["epoch"] == 0 and "mid_epoch" in state
    bad.write_bytes(good)  # replaced: the run goes on from where it stopped
    assert clusterclr.resume(tmp_path / "stopped").epoch == 2

    bad.write_bytes(b"")
    with pytest.warns(UserWarning, match=rf"skipped 1 unreadable image file\(s\) .*{bad}: empty file"):
        run = clusterclr.train(config(root, "data.stream=true", "data.skip_bad=true"), out=tmp_path / "skipping")
    assert run.epoch == 2
    assert (tmp_path / "skipping" / "skipped_files.txt").read_text().split("\t")[0] == str(bad)


def test_prepared_shards_read_back_bit_exact_and_as_the_folder_reads(tmp_path, capsys):
    root = write_folder(tmp_path / "photos", 6, classes=("cat", "dog", "emu"))
    out = tmp_path / "shards"
    assert main(["prepare", str(root), "--out", str(out), "--size", "3KB"]) == 0
    index = json.loads((out / "shards.json").read_text())
    assert index["__kind__"] == "wids-shard-index-v1" and index["class_names"] == ["cat", "dog", "emu"]
    assert len(index["shardlist"]) > 2 and sum(s["nsamples"] for s in index["shardlist"]) == 18
    files = image_paths(root)
    members = {}
    for shard in index["shardlist"]:
        with tarfile.open(out / shard["url"]) as tar:
            members.update({m.name: tar.extractfile(m).read() for m in tar})
        assert (out / shard["url"]).stat().st_size == shard["filesize"]
    for row, path in enumerate(files):
        key = f"{row:09d}"
        assert members[f"{key}.png"] == path.read_bytes()
        assert members[f"{key}.cls"] == str(row // 6).encode()
        assert json.loads(members[f"{key}.json"]) == {"source": str(path.relative_to(root))}
    folder, shards = load_raw("folder", root, 16), load_raw("shards", out, 16)
    assert torch.equal(folder.train.images, shards.train.images) and torch.equal(folder.train.labels, shards.train.labels)
    streamed = load_raw("shards", out, 16, stream=True, workers=0).train.images
    assert all(streamed.store.read(row) == path.read_bytes() for row, path in enumerate(files))
    assert main(["prepare", str(root), "--out", str(out)]) == 2
    assert "not an empty folder" in capsys.readouterr().err


def test_the_folder_index_keeps_the_load_order_and_is_cached_until_the_folder_changes(tmp_path, monkeypatch):
    root = tmp_path / "tree"
    for relative in ["a/x.png", "a/sub/y.jpg", "a-b/z.png", "a/.hidden.png", ".git/q.png", "b/notes.txt", "b/w.PNG"]:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(b"")
    expected = ["a/sub/y.jpg", "a/x.png", "a-b/z.png", "b/w.PNG"]  # sorted by path components, as sorted(Path) is
    assert [str(p.relative_to(root)) for p in image_paths(root)] == expected
    monkeypatch.setattr(folder_index, "CACHE_FROM", 1)
    image_paths(root)  # walked and cached
    walk = folder_index._walk
    monkeypatch.setattr(folder_index, "_walk", lambda *a, **k: pytest.fail("walked although cached"))
    assert [str(p.relative_to(root)) for p in image_paths(root)] == expected
    (root / "a" / "sub" / "new.png").write_bytes(b"")
    monkeypatch.setattr(folder_index, "_walk", walk)
    assert "a/sub/new.png" in [str(p.relative_to(root)) for p in image_paths(root)]


def test_cluster_embed_evaluate_and_assign_work_on_a_streamed_folder(tmp_path, capsys):
    root = write_folder(tmp_path / "photos", 10)
    bad = root / "a" / "004.png"
    bad.write_bytes(b"junk")
    run = tmp_path / "run"
    stream = ["data.stream=true", "data.skip_bad=true", "data.workers=0", "model.width=0.125", "data.image_size=16",
              "method.projection_hidden_dim=16", "method.projection_dim=8", "train.progress=false"]
    assert main(["cluster", str(root), "--clusters", "2", "--epochs", "1", "--out", str(run), "--set", *stream]) == 0
    assert f"skipped 1 unreadable image file(s) (data.skip_bad=true), e.g. {bad}" in capsys.readouterr().err
    rows = list(csv.DictReader((run / "clusters.csv").open()))
    readable = [str(p) for p in image_paths(root) if p != bad]
    assert [r["path"] for r in rows] == readable
    assert np.load(run / "embeddings.npy").shape[0] == 19 and (run / "report.html").is_file()
    assert main(["embed", str(run), "--out", str(tmp_path / "e.npy")]) == 0
    embedded = list(csv.DictReader((tmp_path / "e.csv").open()))
    assert [r["source"] for r in embedded] == readable and len(np.load(tmp_path / "e.npy")) == 19
    assert main(["evaluate", str(run)]) == 0
    with pytest.raises(UserError, match=f"cannot use {bad}"):
        clusterclr.load(run).assign(root, skip_bad=False)
    assert [str(p) for p in clusterclr.load(run).assign(root).paths] == readable  # as the run was trained: skipped
    assigned = clusterclr.load(run).assign([p for p in image_paths(root) if p != bad])
    assert [int(r["cluster"]) for r in rows] == assigned.cluster.tolist()


def _train_on_shards(shards: Path, run_dir: Path) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    from test_distributed import freeze_batch_norm

    from clusterclr.runlog import SilentLog

    torch.manual_seed(0)
    cfg = config(shards, "data.stream=true", "data.image_size=8", "optim.batch_size=16", *WHOLE, epochs=2, dataset="shards")
    trainer = Trainer(build_parts(cfg), RunDir(run_dir))
    freeze_batch_norm(trainer.method)  # each image's output its own: the runs differ only by the distributed machinery
    seen, loss = [], trainer.loss
    trainer.loss = lambda host: seen.append(host.indices.clone()) or loss(host)
    trainer.fit(SilentLog())
    return trainer.method.state_dict(), seen


def _two_processes_on_shards(rank: int, tmp: str) -> None:
    torch.save(_train_on_shards(Path(tmp) / "shards", Path(tmp) / f"rank{rank}"), f"{tmp}/trained{rank}.pt")


def test_prepared_shards_train_the_same_in_two_processes_as_in_one(tmp_path):
    from test_distributed import _spawn

    write_folder(tmp_path / "photos", 32, side=8)
    clusterclr.prepare(tmp_path / "photos", tmp_path / "shards", size="2KB")
    _spawn(_two_processes_on_shards, tmp_path)
    alone, seen_alone = _train_on_shards(tmp_path / "shards", tmp_path / "alone")
    ranks = [torch.load(tmp_path / f"trained{rank}.pt", weights_only=True) for rank in range(2)]
    for state, _ in ranks:
        for key, value in alone.items():
            torch.testing.assert_close(state[key].float(), value.float(), rtol=1e-3, atol=2e-5, msg=key)
    # Each rank read its own half of every global batch: together the one-process epochs, each image once per epoch.
    halves = torch.cat([torch.stack(seen, 0) for _, seen in ranks], 1).flatten()
    assert len(seen_alone) == 6 and torch.equal(halves, torch.cat(seen_alone))
    assert len(torch.cat(seen_alone[:3]).unique()) == 48
