"""Distributed training (torch.distributed, gloo, 2 processes on the CPU) equals one process on the global batch.

Batch norm couples the images of a batch, and torch's SyncBatchNorm does not
run on the CPU, so the comparisons below put every batch-norm layer in eval
mode (running statistics): each image's output then depends on that image
alone, and any difference between the runs is the distributed machinery's.
With train.sync_batch_norm on CUDA the same holds in training mode.
"""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import clusterclr
from clusterclr import distributed
from clusterclr.build import build_model, build_parts
from clusterclr.configure import build_config
from clusterclr.errors import UserError
from clusterclr.methods.base import Batch, DataInfo
from clusterclr.methods.training_images import TrainingImages
from clusterclr.rundir import RunDir
from clusterclr.runlog import SilentLog
from clusterclr.training.loop import Trainer

WORLD = 2
GLOBAL_BATCH = 16
SIDE = 8
HEADS = ["method.projection_hidden_dim=32", "method.projection_dim=16"]
# One loss family each: NT-Xent, InfoNCE with a queue, CC's cluster columns and entropy, DEC target
# and anchor, multi-positive NT-Xent and InfoNCE (SePP, with weighted and with uniform positives),
# SePP's partner term, ProtoNCE (at full and ramped weight), SCAN's pairs and entropy. A key's first word is the method.
METHODS = {
    "simclr": [],
    "moco_v2": ["method.queue_size=32"],
    "cc": ["method.cluster_hidden_dim=16"],
    "center_predictor": ["method.balance_weight=0.5"],
    "center_predictor joint": ["method.clean_view_norm=joint"],
    "sepp_simclr": [],
    "sepp_simclr uniform": ["positives.partner_share=null"],
    "sepp_moco_v2": ["method.queue_size=32"],
    "sepp_moco_v2 uniform": ["method.queue_size=32", "positives.partner_share=null", "method.symmetric=true"],
    "sepp_simsiam": ["method.predictor_hidden_dim=8"],
    "pcl": ["method.queue_size=32", "method.granularities=[3,4]"],
    "pcl ramped": ["method.queue_size=32", "method.granularities=[3,4]", "method.proto_ramp_epochs=4"],
    "scan": ["method.heads=3"],
}
DATA = DataInfo(num_images=64, num_classes=4, channels=1, image_size=(SIDE, SIDE), clusters=4)


def _spawn(fn, tmp_path, *args) -> None:
    mp.spawn(_worker, args=(fn, str(tmp_path), args), nprocs=WORLD, join=True)


def _worker(rank: int, fn, tmp: str, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=WORLD)
    try:
        fn(rank, tmp, *args)
        dist.barrier()  # rank 0 may still be evaluating: leave the group together
    finally:
        dist.destroy_process_group()


def freeze_batch_norm(module: nn.Module) -> None:
    """Keep every batch norm in eval mode, whatever ``module.train()`` later asks."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train = types.MethodType(lambda self, mode=True: nn.Module.train(self, False), m)
            m.eval()


def _method(key: str):
    torch.manual_seed(0)
    name = key.split()[0]
    heads = [] if name == "scan" else HEADS  # SCAN has cluster heads, no projector
    overrides = ["model.width=0.125", "train.device=cpu", "train.precision=fp32", *heads, *METHODS[key]]
    method = build_model(build_config(flags={"method.name": name}, overrides=overrides), DATA, {"mean": [0.5], "std": [0.25]}).method
    freeze_batch_norm(method)
    method.train()
    generator = torch.Generator().manual_seed(1)
    if hasattr(method, "queue"):
        method.queue.enqueue(torch.randn(24, method.queue.buffer.shape[1], generator=generator))
    if hasattr(method, "partners"):
        # Each batch image's partner: the next one in the batch, inside a rank's slice or across the two.
        indices = _batch(slice(None)).indices
        method.partners[indices, 0] = indices.roll(-1)
    if name == "center_predictor":
        method.centres.initialise(torch.randn(4, method.backbone.feature_dim, generator=generator))
    if name == "pcl":
        for p in method.prototypes:
            p.centroids.copy_(nn.functional.normalize(torch.randn(p.centroids.shape, generator=generator), dim=1))
            p.labels.copy_(torch.randint(0, p.num_clusters, p.labels.shape, generator=generator))
            p.concentration.copy_(torch.rand(p.num_clusters, generator=generator) * 0.3 + 0.1)
        method.proto_ramp.set_epoch(method.proto_ramp.warmup)
    return method


def _batch(rows: slice) -> Batch:
    generator = torch.Generator().manual_seed(2)
    views = [torch.randn(GLOBAL_BATCH, 1, SIDE, SIDE, generator=generator) for _ in range(3)]
    indices = torch.arange(GLOBAL_BATCH) * 3 % DATA.num_images  # not 0..B-1: rows of the training set
    return Batch([v[rows] for v in views[:2]], indices[rows], views[2][rows])


def _gradients(method: nn.Module, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
    model(batch).loss.backward()
    return {name: p.grad.clone() for name, p in method.named_parameters() if p.grad is not None}


def _split_batch_gradients(rank: int, tmp: str) -> None:
    n = GLOBAL_BATCH // WORLD
    results = {}
    for name in METHODS:
        method = _method(name)
        model = distributed.wrap(method, torch.device("cpu"), sync_batch_norm=False, idle_parameters=False)
        results[name] = _gradients(method, model, _batch(slice(rank * n, (rank + 1) * n)))
        if hasattr(method, "_new_keys"):
            results[name]["queued keys"] = method._new_keys.clone()
    torch.save(results, f"{tmp}/gradients{rank}.pt")


def test_split_batch_gradients_equal_whole_batch_gradients(tmp_path):
    _spawn(_split_batch_gradients, tmp_path)
    for rank in range(WORLD):
        split = torch.load(tmp_path / f"gradients{rank}.pt", weights_only=True)
        for name in METHODS:
            method = _method(name)
            whole = _gradients(method, method, _batch(slice(None)))
            if hasattr(method, "_new_keys"):
                whole["queued keys"] = method._new_keys  # every rank's keys, in the one-process order
            assert split[name].keys() == whole.keys(), name
            assert len(whole) > 4, name
            for key in whole:
                torch.testing.assert_close(split[name][key], whole[key], rtol=1e-4, atol=1e-6, msg=f"{name}: {key}")


def test_gradients_without_gathered_negatives_differ(tmp_path):
    # The check above can fail: contrasting each slice on its own is another loss.
    method = _method("simclr")
    whole = _gradients(method, method, _batch(slice(None)))
    halves = [_gradients(m, m, _batch(s)) for m, s in ((_method("simclr"), slice(0, 8)), (_method("simclr"), slice(8, 16)))]
    mean = {key: (halves[0][key] + halves[1][key]) / 2 for key in whole}
    assert any(not torch.allclose(mean[key], whole[key], rtol=1e-3, atol=1e-5) for key in whole)


def _clustering_state(rank: int, tmp: str) -> None:
    results = {}
    images = torch.randint(0, 256, (DATA.num_images, 1, SIDE, SIDE), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    for name, extra in (
        ("interclr", ["method.queue_size=32", "method.pseudo_label_clusters=6", "method.min_cluster_size=4", "method.refresh_every=1",
                      "method.negative_pool=32", "method.negatives=8", "method.recluster_every=1"]),
        ("pcl", ["method.queue_size=32", "method.granularities=[5]", "method.warmup_epochs=0"]),
        ("center_predictor", []),
        ("sepp_simclr", ["positives.warmup_epochs=0", "positives.space=whitened", "positives.quantile=0.3"]),
    ):
        torch.manual_seed(0)
        overrides = ["model.width=0.125", "train.device=cpu", "train.precision=fp32", *HEADS, *extra]
        model = build_model(build_config(flags={"method.name": name}, overrides=overrides), DATA, {"mean": [0.5], "std": [0.25]})
        method = model.method
        torch.manual_seed(rank)  # ranks' own randomness must not matter
        training_images = TrainingImages(images, None, model.views, torch.device("cpu"), batch_size=12, seed=0)
        method.on_epoch_start(0, training_images)
        if name == "interclr":
            n = GLOBAL_BATCH // WORLD
            for step in range(3):  # bank writes of every rank's keys, and a refresh after each
                rows = torch.arange(step * GLOBAL_BATCH, (step + 1) * GLOBAL_BATCH)[rank * n : (rank + 1) * n]
                method(Batch(model.views(images[rows], 2), rows)).loss.backward()
                method.after_optimizer_step(0.0)
            method.on_epoch_start(1, training_images)  # a k-means re-fit of the bank
        results[name] = {key: value.clone() for key, value in method.state_dict().items() if "encoder" not in key
                         and not key.startswith(("backbone", "projector", "predictor", "cluster_head"))}
        results[name]["features"] = training_images.encode(method.backbone, method.backbone)
    torch.save(results, f"{tmp}/clustering{rank}.pt")


def test_every_rank_holds_the_same_clustering(tmp_path):
    _spawn(_clustering_state, tmp_path)
    ranks = [torch.load(tmp_path / f"clustering{rank}.pt", weights_only=True) for rank in range(WORLD)]
    for name, state in ranks[0].items():
        assert state.keys() == ranks[1][name].keys()
        for key, value in state.items():
            assert torch.equal(value, ranks[1][name][key]), f"{name}: {key} differs between ranks"
    # The features each rank encoded half of are every image's, in order, as one process encodes them.
    torch.manual_seed(0)
    overrides = ["model.width=0.125", "train.device=cpu", "train.precision=fp32", *HEADS, "positives.warmup_epochs=0"]
    model = build_model(build_config(flags={"method.name": "sepp_simclr"}, overrides=overrides), DATA, {"mean": [0.5], "std": [0.25]})
    images = torch.randint(0, 256, (DATA.num_images, 1, SIDE, SIDE), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    alone = TrainingImages(images, None, model.views, torch.device("cpu"), batch_size=12).encode(model.method.backbone, model.method.backbone)
    torch.testing.assert_close(ranks[0]["sepp_simclr"]["features"], alone, rtol=1e-5, atol=1e-6)
    assert (ranks[0]["interclr"]["bank.writes"] == 3).all()
    assert (ranks[0]["sepp_simclr"]["partners"] >= 0).any()
    assert len(ranks[0]["interclr"]["bank.labels"].unique()) == 6


# A short real training run: identity views (so both runs see the same pixels), fp32, frozen batch norm.
TRAIN = [
    "train.device=cpu", "train.precision=fp32", "train.progress=false", "train.eval_every=0", "train.epochs=1",
    "train.checkpoint_every=100", "model.width=0.125", "optim.batch_size=256", *HEADS,
    "augment.crop_scale=[1.0, 1.0]", "augment.crop_ratio=[1.0, 1.0]", "augment.flip_prob=0", "augment.jitter_prob=0",
]
TRAINED = {"simclr": [], "moco_v2": ["method.queue_size=300", "method.bn_groups=1"]}


def _train(name: str, run_dir: Path) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    torch.manual_seed(0)
    config = build_config(flags={"method.name": name}, overrides=TRAIN + TRAINED[name])
    trainer = Trainer(build_parts(config), RunDir(run_dir))
    freeze_batch_norm(trainer.method)
    seen = []
    loss = trainer.loss
    trainer.loss = lambda host: seen.append(host.indices.clone()) or loss(host)
    trainer.fit(SilentLog())
    return trainer.method.state_dict(), seen


def _distributed_training(rank: int, tmp: str) -> None:
    torch.save({name: _train(name, Path(tmp) / f"{name}-rank{rank}") for name in TRAINED}, f"{tmp}/trained{rank}.pt")


def test_two_process_training_matches_one_process(tmp_path):
    _spawn(_distributed_training, tmp_path)
    ranks = [torch.load(tmp_path / f"trained{rank}.pt", weights_only=True) for rank in range(WORLD)]
    for name in TRAINED:
        alone, seen_alone = _train(name, tmp_path / f"{name}-alone")
        for rank in range(WORLD):
            state, _ = ranks[rank][name]
            for key, value in alone.items():
                torch.testing.assert_close(state[key].float(), value.float(), rtol=1e-3, atol=2e-5, msg=f"{name}, rank {rank}: {key}")
        # Each rank took its own half of every global batch: together, the one-process epoch, each image once.
        halves = [torch.cat(ranks[rank][name][1]) for rank in range(WORLD)]
        assert len(seen_alone) == 5 and all(len(h) == 5 * 128 for h in halves)
        assert torch.equal(torch.cat([torch.stack(ranks[r][name][1]) for r in range(WORLD)], 1).flatten(), torch.cat(seen_alone))
        assert len(torch.cat(halves).unique()) == 5 * 256


def test_uneven_batch_split_is_refused(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    with pytest.raises(UserError, match="optim.batch_size=256 does not split evenly over 3 processes"):
        distributed.check_batch(256)


def test_sync_batch_norm_on_cpu_processes_is_refused(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(UserError, match="train.sync_batch_norm needs CUDA devices"):
        distributed.wrap(nn.BatchNorm2d(3), torch.device("cpu"), sync_batch_norm=True, idle_parameters=False)


# Batch norm in training mode here: between the epochs' averaging each rank's running statistics follow
# its own slices, and a mid-epoch checkpoint must carry every rank's (rank 0's alone resumes inexactly).
RESUMED = [
    "train.device=cpu", "train.precision=fp32", "train.progress=false", "train.report=false", "train.eval_every=0",
    "train.epochs=3", "train.checkpoint_every=100", "model.width=0.125", "optim.batch_size=256", *HEADS,
]


def _stopped_and_resumed(rank: int, tmp: str) -> None:
    from clusterclr.errors import Interrupted

    optimise = Trainer.optimise

    def stop_on_rank_1_after_step_7(self, out, step):
        optimise(self, out, step)
        if rank == 1 and step + 1 == 7:  # mid-epoch 2; a stop asked on one rank stops both
            self.stop.signal = 15

    Trainer.optimise = stop_on_rank_1_after_step_7
    with pytest.raises(Interrupted):
        clusterclr.train(build_config(overrides=RESUMED), out=Path(tmp) / "resumed")
    Trainer.optimise = optimise
    clusterclr.resume(Path(tmp) / "resumed")
    clusterclr.train(build_config(overrides=RESUMED), out=Path(tmp) / "uninterrupted")


def test_a_stopped_two_process_run_resumes_to_the_uninterrupted_result(tmp_path):
    from clusterclr.io import load_checkpoint

    _spawn(_stopped_and_resumed, tmp_path)
    resumed, uninterrupted = (load_checkpoint(RunDir(tmp_path / run).checkpoint) for run in ("resumed", "uninterrupted"))
    assert resumed["epoch"] == uninterrupted["epoch"] == 3
    for key, value in uninterrupted["method"].items():
        assert torch.equal(resumed["method"][key], value), key
