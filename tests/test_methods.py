"""Every registered method trains on digits: its loss falls and its outputs do not collapse."""

import math

import pytest
import torch

import clusterclr
from clusterclr.build import build_parts
from clusterclr.configure import build_config
from clusterclr.evaluate.standard import evaluate_parts
from clusterclr.methods.base import Batch
from clusterclr.methods.registry import method_summaries
from clusterclr.rundir import RunDir
from clusterclr.runlog import read_log

TINY = ["model.width=0.125", "optim.batch_size=128", "train.progress=false", "train.report=false", "train.eval_every=0", "train.log_every=1"]
SMALL_HEADS = {
    "simclr": ["method.projection_hidden_dim=64", "method.projection_dim=32"],
    "moco_v2": ["method.projection_hidden_dim=64", "method.projection_dim=32", "method.queue_size=512", "method.momentum=0.99"],
    "simsiam": ["method.projection_hidden_dim=64", "method.projection_dim=64", "method.predictor_hidden_dim=16", "optim.lr=0.1"],
    "byol": ["method.projection_hidden_dim=64", "method.projection_dim=32", "method.predictor_hidden_dim=64"],
    "center_predictor": ["method.projection_hidden_dim=64", "method.projection_dim=32"],
    "cc": ["method.projection_hidden_dim=64", "method.projection_dim=32", "method.cluster_hidden_dim=32"],
    "interclr": ["method.projection_hidden_dim=64", "method.projection_dim=32", "method.queue_size=512", "method.momentum=0.99",
                 "method.pseudo_label_clusters=20", "method.min_cluster_size=5", "method.negative_pool=256", "method.negatives=64"],
    "pcl": ["method.projection_hidden_dim=64", "method.projection_dim=32", "method.queue_size=512", "method.momentum=0.99",
            "method.granularities=[10,20]", "method.warmup_epochs=1", "method.concentration_floor=0.5"],
}
# SePP on each base, its partners mined from epoch 1 on so that the short runs below train with them.
SMALL_HEADS |= {
    f"sepp_{base}": SMALL_HEADS[base] + ["positives.warmup_epochs=1", "positives.refresh_every=2"]
    for base in ("simclr", "moco_v2", "simsiam")
}


def test_every_method_is_listed():
    assert set(SMALL_HEADS) <= set(method_summaries())


@pytest.mark.parametrize("method", sorted(SMALL_HEADS))
def test_short_run_on_digits_learns_without_collapse(method, tmp_path):
    config = build_config(flags={"method.name": method, "train.epochs": 6}, overrides=TINY + SMALL_HEADS[method])
    untrained = evaluate_parts(build_parts(config))["knn_acc"]  # about 0.18
    metrics = clusterclr.train(config, out=tmp_path / method).metrics
    log = read_log(RunDir(tmp_path / method).log)
    epochs = [r["loss"] for r in log if r["kind"] == "epoch"]
    # From epoch 2: MoCo's loss first rises while its queue fills (more negatives, higher loss).
    assert epochs[-1] < epochs[1]
    dim = int(SMALL_HEADS[method][1].split("=")[1])
    # Collapsed outputs have std ~0; uniformly spread ones about 1/sqrt(dim). MoCo's queries sit
    # in a narrower cone than SimCLR's early on (about 0.2/sqrt(dim) here), InterCLR's narrower
    # still as cluster mates attract (0.10-0.12/sqrt(dim), by precision and thread count), so the
    # bar is 0.05/sqrt(dim).
    assert [r["output_std"] for r in log if r["kind"] == "step"][-1] > 0.05 / math.sqrt(dim)
    # Six epochs take SimCLR to about 0.75 and the SimSiam family to about 0.5.
    assert metrics["knn_acc"] > untrained + 0.2


@pytest.mark.parametrize("method", ["moco_v2", "byol"])
def test_no_gradient_reaches_the_momentum_branch(method):
    config = build_config(flags={"method.name": method}, overrides=TINY + SMALL_HEADS[method])
    parts = build_parts(config)
    images = parts.splits.train.images[:16]
    batch = Batch(parts.views(images, 2), torch.arange(16))
    parts.method.training_step(batch).loss.backward()
    momentum = parts.method.momentum_encoder
    assert all(p.grad is None for p in momentum.parameters())
    assert all(p.grad is not None for p in parts.method.backbone.parameters())


def test_moco_queue_never_holds_the_current_batch_keys():
    config = build_config(flags={"method.name": "moco_v2"}, overrides=TINY + SMALL_HEADS["moco_v2"])
    parts = build_parts(config)
    method, views, images = parts.method, parts.views, parts.splits.train.images
    for step in range(3):
        before = method.queue.keys().clone()
        batch = Batch(views(images[step * 16 : (step + 1) * 16], 2), torch.arange(16))
        method.training_step(batch).loss.backward()
        # The loss saw only keys from earlier batches; this batch's keys wait until after the step.
        assert torch.equal(method.queue.keys(), before)
        new_keys = torch.nn.functional.normalize(method._new_keys.float(), dim=1)
        method.after_optimizer_step(0.0)
        assert len(method.queue.keys()) == len(before) + 16
        assert torch.allclose(method.queue.keys()[-16:], new_keys)


@pytest.mark.parametrize("method", sorted(SMALL_HEADS))
def test_every_method_trains_on_rgb_npz_data(method, tmp_path):
    import numpy as np

    generator = np.random.default_rng(0)
    path = tmp_path / "data.npz"
    np.savez(path, x=generator.integers(0, 256, (48, 12, 12, 3), dtype=np.uint8), y=np.arange(48) % 3)
    config = build_config(
        flags={"method.name": method, "train.epochs": 2, "data.dataset": "npz", "data.root": str(path)},
        # A queue that fits 39 images, so MoCo's queue holds no stale keys of a query's own image.
        overrides=TINY + SMALL_HEADS[method] + ["optim.batch_size=16"] + (["method.queue_size=8"] if method.endswith("moco_v2") else []),
    )
    metrics = clusterclr.train(config, out=tmp_path / "run").metrics
    assert metrics["num_train"] == 48 - 3 * 3 and metrics["eval_split"] == "holdout"  # 3 of 16 per class held out
    assert 0.0 <= metrics["kmeans_nmi"] <= 1.0


def test_moco_warns_when_its_queue_outgrows_the_data():
    config = build_config(flags={"method.name": "moco_v2"}, overrides=TINY + ["method.queue_size=4096"])
    with pytest.warns(UserWarning, match="queue_size=4096 is not below the 1438 training images"):
        build_parts(config)
