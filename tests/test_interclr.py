"""InterCLR's parts: cluster-mate and semi-hard samplers, the margin loss, and the method's bank handling."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import clusterclr
from clusterclr.build import build_parts
from clusterclr.clustering.online import nearest_centroid
from clusterclr.configure import build_config
from clusterclr.errors import Interrupted, UserError
from clusterclr.losses.inter_image import margin_info_nce
from clusterclr.methods.base import Batch
from clusterclr.methods.interclr import InterCLR
from clusterclr.methods.training_images import TrainingImages
from clusterclr.positives.cluster_mates import cluster_mates, semi_hard_negatives
from clusterclr.rundir import RunDir
from clusterclr.runlog import read_log

TINY = [
    "method.name=interclr", "model.width=0.125", "optim.batch_size=128", "train.progress=false", "train.report=false",
    "train.eval_every=0", "train.log_every=1", "method.projection_hidden_dim=64", "method.projection_dim=32",
    "method.queue_size=512", "method.momentum=0.99", "method.pseudo_label_clusters=20", "method.min_cluster_size=5",
    "method.negative_pool=256", "method.negatives=64",
]


# -- samplers ----------------------------------------------------------------------------------


def test_a_cluster_mate_shares_the_label_and_is_another_image_unless_the_image_is_alone():
    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([3, 1, 1, 3, 0, 2, 1, 3, 3, 1, 3, 0, 1, 3])  # cluster 2 has one image, cluster 4 none
    anchors = torch.arange(len(labels)).repeat(300)
    mates = cluster_mates(labels, anchors, num_clusters=5, generator=generator)
    assert torch.equal(labels[mates], labels[anchors])
    alone = anchors == 5
    assert torch.equal(mates[alone], anchors[alone])
    assert (mates[~alone] != anchors[~alone]).all()
    # Every other member of the cluster gets drawn: uniform over the mates, not just the first few.
    for anchor in range(len(labels)):
        others = {i for i in range(len(labels)) if labels[i] == labels[anchor] and i != anchor}
        assert set(mates[anchors == anchor].tolist()) == (others or {anchor})


def test_semi_hard_negatives_come_from_the_most_similar_entries_and_never_share_the_label():
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 4, (60,), generator=generator)
    anchor_labels = torch.tensor([0, 1, 2, 3, 0])
    similarities = torch.randn(5, 60, generator=generator)
    pool = similarities.topk(20, dim=1).indices
    seen = [set() for _ in range(5)]
    for _ in range(50):
        negatives, valid = semi_hard_negatives(similarities, labels, anchor_labels, pool=20, count=6, generator=generator)
        assert negatives.shape == valid.shape == (5, 6)
        assert valid.all()  # 20 candidates, about 15 of another cluster: enough for 6
        assert (labels[negatives] != anchor_labels[:, None]).all()
        for row in range(5):
            assert set(negatives[row].tolist()) <= set(pool[row].tolist())
            assert len(set(negatives[row].tolist())) == 6  # without replacement
            seen[row] |= set(negatives[row].tolist())
    for row in range(5):  # drawn uniformly from the whole eligible part of the pool
        assert seen[row] == {i for i in pool[row].tolist() if labels[i] != anchor_labels[row]}


def test_too_few_eligible_negatives_are_all_returned_and_the_rest_marked_invalid():
    labels = torch.tensor([0, 0, 0, 1, 0, 2, 0, 0])
    similarities = torch.linspace(1, 0, 8)[None]  # row 0 most similar, row 7 least
    negatives, valid = semi_hard_negatives(similarities, labels, torch.tensor([0]), pool=6, count=4)
    assert valid.sum() == 2
    assert set(negatives[valid].tolist()) == {3, 5}
    # A pool larger than the bank is the whole bank.
    negatives, valid = semi_hard_negatives(similarities, labels, torch.tensor([0]), pool=100, count=100)
    assert negatives.shape == (1, 8) and valid.sum() == 2


# -- the loss ----------------------------------------------------------------------------------


def reference_margin_nce(q, p, n, margin, tau, valid) -> float:
    """-log e^{(cos(q,p) - m)/τ} / (e^{(cos(q,p) - m)/τ} + Σ_valid e^{cos(q,n_j)/τ}), in float64, averaged."""
    cos = lambda a, b: float(a.double() @ b.double() / (a.double().norm() * b.double().norm()))  # noqa: E731
    total = 0.0
    for i in range(len(q)):
        positive = math.exp((cos(q[i], p[i]) - margin) / tau)
        negatives = sum(math.exp(cos(q[i], n[i, j]) / tau) for j in range(n.shape[1]) if valid[i, j])
        total += -math.log(positive / (positive + negatives))
    return total / len(q)


@pytest.mark.parametrize("margin, tau", [(-0.5, 0.2), (0.0, 0.2), (0.3, 0.5)])
def test_margin_nce_equals_float64_reference(margin, tau):
    torch.manual_seed(2)
    q, p, n = torch.randn(6, 5), torch.randn(6, 5) * 2, torch.randn(6, 7, 5)
    valid = torch.rand(6, 7) > 0.3
    loss = margin_info_nce(q, p, n, margin, tau, valid)
    assert loss.item() == pytest.approx(reference_margin_nce(q, p, n, margin, tau, valid), rel=1e-5)
    all_valid = torch.ones(6, 7, dtype=torch.bool)
    everything = margin_info_nce(q, p, n, margin, tau)
    assert everything.item() == pytest.approx(reference_margin_nce(q, p, n, margin, tau, all_valid), rel=1e-5)


def test_the_margin_is_subtracted_from_the_positive_cosine_before_the_temperature():
    # cos(q, p) = 1 and one negative at cos 0: ℓ = log(1 + e^{-(1 - m)/τ}).
    q = p = torch.tensor([[1.0, 0.0]])
    n = torch.tensor([[[0.0, 1.0]]])
    for margin in (-0.5, 0.0, 0.5):
        expected = math.log1p(math.exp(-(1 - margin) / 0.5))
        assert margin_info_nce(q, p, n, margin, 0.5).item() == pytest.approx(expected, rel=1e-5)
    # A negative margin loosens: the same pair costs less.
    assert margin_info_nce(q, p, n, -0.5, 0.5) < margin_info_nce(q, p, n, 0.0, 0.5)


def test_margin_nce_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="expected positives"):
        margin_info_nce(torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 5, 2), -0.5, 0.2)


# -- the method --------------------------------------------------------------------------------


def tiny_parts(*extra: str):
    return build_parts(build_config(overrides=TINY + list(extra)))


def training_images(parts) -> TrainingImages:
    train = parts.splits.train
    return TrainingImages(train.images, train.labels, parts.views, parts.device, 512)


def test_the_bank_takes_the_batch_keys_after_the_optimiser_step_and_relabels_them():
    torch.manual_seed(0)
    parts = tiny_parts()
    method, images = parts.method, parts.splits.train.images
    logs = method.on_epoch_start(0, training_images(parts))
    assert logs["clusters_empty"] == 0 and logs["cluster_size_min"] >= 5
    assert 0.0 < logs["pseudo_label_nmi"] <= 1.0
    indices = torch.arange(40, 72)
    before = method.bank.features.clone()
    out = method.training_step(Batch(parts.views(images[indices], 2), indices))
    assert 0.0 <= float(out.logs["positive_precision"]) <= 1.0
    out.loss.backward()
    assert torch.equal(method.bank.features, before)  # the loss saw only the bank as it was
    keys = F.normalize(method._bank_update[1].float(), dim=1)
    method.after_optimizer_step(0.0)
    assert torch.allclose(method.bank.features[indices], keys)
    assert torch.equal(method.bank.features[:40], before[:40])
    assert torch.equal(method.bank.labels[indices], nearest_centroid(keys, method.bank.centroids))


def test_the_inter_image_loss_trains_the_query_encoder_and_never_the_key_encoder():
    torch.manual_seed(0)
    parts = tiny_parts("method.intra_weight=0")
    method = parts.method
    method.on_epoch_start(0, training_images(parts))
    out = method.training_step(Batch(parts.views(parts.splits.train.images[:32], 2), torch.arange(32)))
    out.loss.backward()
    assert all(p.grad is None for p in method.momentum_encoder.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.projector.parameters())
    assert not method.bank.features.requires_grad


def test_no_inter_image_loss_during_warm_up():
    torch.manual_seed(0)
    parts = tiny_parts("method.warmup_epochs=1")
    method = parts.method
    method.on_epoch_start(0, training_images(parts))
    out = method.training_step(Batch(parts.views(parts.splits.train.images[:32], 2), torch.arange(32)))
    assert "inter" not in out.logs and torch.equal(out.loss, out.logs["intra"])
    method.on_epoch_start(1, training_images(parts))
    assert "inter" in method.training_step(Batch(parts.views(parts.splits.train.images[:32], 2), torch.arange(32))).logs


@pytest.mark.parametrize(
    "override, message",
    [
        ("method.negatives=300", "negatives=300 cannot be drawn from a negative_pool of 256"),
        ("method.pseudo_label_clusters=1", "'method.pseudo_label_clusters'"),
        ("method.bank_dtype=int8", "'method.bank_dtype'"),
    ],
)
def test_bad_options_are_reported(override, message):
    with pytest.raises(UserError, match=message):
        build_config(overrides=TINY + [override])


def test_more_clusters_than_images_is_refused():
    with pytest.raises(UserError, match="method.pseudo_label_clusters=5000 exceeds the 1438 training images"):
        tiny_parts("method.pseudo_label_clusters=5000")


def test_unlabelled_data_needs_a_cluster_count_and_logs_no_nmi(tmp_path):
    data = tmp_path / "unlabelled.npz"
    np.savez(data, x=np.random.default_rng(0).integers(0, 256, (40, 8, 8), dtype=np.uint8))
    unlabelled = ["data.dataset=npz", f"data.root={data}", "optim.batch_size=8", "method.queue_size=16",
                  "method.negative_pool=16", "method.negatives=8", "method.min_cluster_size=2"]
    with pytest.raises(UserError, match="set the number of clusters with --set clusters=K"):
        build_parts(build_config(overrides=TINY + unlabelled + ["method.pseudo_label_clusters=4"]))
    # The bank's clustering defaults to K.
    parts = build_parts(build_config(overrides=TINY + unlabelled + ["clusters=3", "method.pseudo_label_clusters=null"]))
    assert parts.method.bank.num_clusters == 3
    parts = build_parts(build_config(overrides=TINY + unlabelled + ["clusters=3", "method.pseudo_label_clusters=4"]))
    logs = parts.method.on_epoch_start(0, training_images(parts))
    assert "pseudo_label_nmi" not in logs and sum(logs["cluster_size_histogram"].values()) == 4
    out = parts.method.training_step(Batch(parts.views(parts.splits.train.images[:8], 2), torch.arange(8)))
    assert "positive_precision" not in out.logs and "inter" in out.logs


def test_resumed_run_equals_uninterrupted_run(tmp_path, monkeypatch, ctrl_c_at_step):
    data = tmp_path / "data.npz"
    generator = np.random.default_rng(0)
    np.savez(data, x=generator.integers(0, 256, (60, 8, 8), dtype=np.uint8), y=np.arange(60) % 3)
    # 48 training images in 6 steps of 8 an epoch, a refresh every 4 steps: refreshes straddle the
    # checkpoint; the inter-image loss starts in epoch 2 at half weight, after a k-means re-fit of the
    # bank, so the resumed run must know its weight; epoch 3 re-fits the bank it resumed with.
    config = build_config(
        flags={"train.epochs": 3, "data.dataset": "npz", "data.root": str(data)},
        overrides=TINY + [
            "optim.batch_size=8", "method.queue_size=16", "method.pseudo_label_clusters=4", "method.min_cluster_size=3",
            "method.negative_pool=24", "method.negatives=8", "method.refresh_every=4", "method.warmup_epochs=1",
            "method.inter_ramp_epochs=2", "method.recluster_every=1",
        ],
    )
    whole, interrupted = tmp_path / "whole", tmp_path / "interrupted"
    clusterclr.train(config, out=whole)
    # Ctrl-C at step 3 of epoch 2: a mid-epoch checkpoint, resumed without on_epoch_start.
    ctrl_c_at_step(InterCLR, 9)
    with pytest.raises(Interrupted, match="at epoch 2, step 3 of 6"):
        clusterclr.train(config, out=interrupted)
    monkeypatch.undo()
    clusterclr.resume(interrupted)
    losses = lambda run: [(r["step"], r["loss"]) for r in read_log(RunDir(run).log) if r["kind"] == "step"]  # noqa: E731
    assert len(losses(whole)) == 18 and losses(interrupted) == losses(whole)
    assert [("inter" in r) for r in read_log(RunDir(whole).log) if r["kind"] == "step"] == [False] * 6 + [True] * 12
    a = torch.load(RunDir(whole).checkpoint, weights_only=True)["method"]
    b = torch.load(RunDir(interrupted).checkpoint, weights_only=True)["method"]
    assert int(a["bank.writes"]) == 18
    for key in ("bank.features", "bank.labels", "bank.centroids", "bank.writes", "inter_ramp.fraction"):
        assert torch.equal(a[key], b[key]), key
    for run in (whole, interrupted):
        epochs = [r for r in read_log(RunDir(run).log) if r["kind"] == "method"]
        assert [r["epoch"] for r in epochs] == [0, 1, 2]
        assert [r["inter_fraction"] for r in epochs] == [0.0, 0.5, 1.0]
        assert ["refit_inertia" in r for r in epochs] == [False, True, True]


def test_the_bank_is_refitted_by_k_means_on_schedule_and_the_term_ramps_in():
    torch.manual_seed(0)
    parts = tiny_parts("method.warmup_epochs=2", "method.recluster_every=3", "method.inter_ramp_epochs=4")
    method, images = parts.method, training_images(parts)
    assert [e for e in range(12) if method.reclusters_at(e)] == [2, 5, 8, 11]
    seeds = []
    real_refit = method.bank.refit
    method.bank.refit = lambda seed, restarts: seeds.append(seed) or real_refit(seed, restarts)
    logs = [method.on_epoch_start(epoch, images) for epoch in range(7)]
    assert [log["inter_fraction"] for log in logs] == [0, 0, 0.25, 0.5, 0.75, 1, 1]
    # The first fit (epoch 0), then re-fits at epochs 2 and 5, each seeded by its epoch.
    assert [epoch for epoch, log in enumerate(logs) if "refit_inertia" in log] == [2, 5]
    assert len(seeds) == 3 and len(set(seeds)) == 3
    # A re-fit is k-means of the bank as it is: labels follow its features, not the first fit's.
    method.bank.features.copy_(F.normalize(torch.randn_like(method.bank.features), dim=1))
    method.bank.refit(seed=3, restarts=1)
    assert torch.equal(method.bank.labels, nearest_centroid(method.bank.features, method.bank.centroids))
    # Half weight: the loss is the intra term plus half the inter term's share.
    method.inter_ramp.set_epoch(3)
    out = method.training_step(Batch(parts.views(parts.splits.train.images[:32], 2), torch.arange(32)))
    expected = 0.75 * out.logs["intra"] + 0.5 * 0.25 * out.logs["inter"]
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)

