"""PCL's parts: ProtoNCE and the concentration estimate against float64 references, and the method's schedule."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import clusterclr
from clusterclr.build import build_parts
from clusterclr.clustering.metrics import nmi
from clusterclr.clustering.prototypes import Prototypes
from clusterclr.configure import build_config
from clusterclr.errors import Interrupted, UserError
from clusterclr.losses.proto_nce import concentration, proto_nce
from clusterclr.methods.base import Batch
from clusterclr.methods.pcl import PCL
from clusterclr.methods.training_images import TrainingImages
from clusterclr.rundir import RunDir
from clusterclr.runlog import read_log

TINY = [
    "method.name=pcl", "model.width=0.125", "optim.batch_size=128", "train.progress=false", "train.report=false",
    "train.eval_every=0", "train.log_every=1", "method.projection_hidden_dim=64", "method.projection_dim=32",
    "method.queue_size=512", "method.momentum=0.99", "method.granularities=[10,20]", "method.warmup_epochs=1",
]


def reference_proto_nce(q, prototypes, assignments, phis, included) -> float:
    """(1/M) Σ_m mean_i −log e^{v_i·c_s/φ_s} / Σ_{k ∈ C} e^{v_i·c_k/φ_k}, term by term in float64."""
    q = q.double() / q.double().norm(dim=1, keepdim=True)
    per_clustering = []
    for c, y, phi, keep in zip(prototypes, assignments, phis, included):
        c = c.double() / c.double().norm(dim=1, keepdim=True)
        total = 0.0
        for i in range(len(q)):
            s = int(y[i])
            terms = [math.exp(float(q[i] @ c[k]) / float(phi[k])) for k in range(len(c)) if keep is None or keep[k] or k == s]
            total += -math.log(math.exp(float(q[i] @ c[s]) / float(phi[s])) / sum(terms))
        per_clustering.append(total / len(q))
    return sum(per_clustering) / len(per_clustering)


def test_proto_nce_equals_float64_reference():
    torch.manual_seed(0)
    q = torch.randn(7, 5)
    prototypes = [torch.randn(3, 5), torch.randn(8, 5) * 4]  # unnormalised on purpose
    assignments = [torch.randint(0, 3, (7,)), torch.randint(0, 8, (7,))]
    phis = [torch.rand(3) * 0.3 + 0.05, torch.rand(8) * 0.3 + 0.05]
    loss = proto_nce(q, prototypes, assignments, phis)
    assert loss.item() == pytest.approx(reference_proto_nce(q, prototypes, assignments, phis, [None, None]), rel=1e-5)
    # A subset of the prototypes in the denominator; each query's own prototype always stays.
    keep = torch.tensor([True, False, False, True, False, True, False, False])
    loss = proto_nce(q, prototypes, assignments, phis, [None, keep])
    assert loss.item() == pytest.approx(reference_proto_nce(q, prototypes, assignments, phis, [None, keep]), rel=1e-5)


def test_proto_nce_needs_one_entry_per_clustering():
    with pytest.raises(ValueError, match="one entry per clustering"):
        proto_nce(torch.randn(2, 3), [torch.randn(4, 3)], [], [torch.ones(4)])


def reference_concentration(features, centroids, labels, k, temperature, floor=0.0):
    """The density estimate of the PCL authors' code, in float64 numpy (squared distances as faiss returns them).

    ``floor`` is our addition: φ raised to floor × mean φ before the rescaling.
    """
    members = [[] for _ in range(k)]
    for i, c in enumerate(labels):
        members[c].append(np.sum((features[i] - centroids[c]) ** 2))
    density = np.zeros(k)
    for i, dist in enumerate(members):
        if len(dist) > 1:
            density[i] = (np.asarray(dist) ** 0.5).mean() / np.log(len(dist) + 10)
    dmax = density.max()
    for i, dist in enumerate(members):
        if len(dist) <= 1:
            density[i] = dmax
    density = density.clip(np.percentile(density, 10), np.percentile(density, 90))
    density = np.maximum(density, floor * density.mean())
    return temperature * density / density.mean()


def test_concentration_equals_the_reference_estimate():
    generator = torch.Generator().manual_seed(3)
    features = F.normalize(torch.randn(60, 6, generator=generator), dim=1)
    labels = torch.randint(0, 8, (60,), generator=generator)
    labels[labels == 6] = 5
    labels[0] = 6  # cluster 6 holds one feature; clusters 8 and 9 none
    centroids = torch.randn(10, 6, generator=generator)
    phi = concentration(features, centroids, labels, temperature=0.2)
    expected = reference_concentration(features.double().numpy(), centroids.double().numpy(), labels.numpy(), 10, 0.2)
    assert phi.dtype == torch.float32
    assert np.allclose(phi.numpy(), expected, rtol=1e-5)
    assert phi.mean().item() == pytest.approx(0.2, rel=1e-5)
    floored = concentration(features, centroids, labels, temperature=0.2, floor=0.8)
    expected = reference_concentration(features.double().numpy(), centroids.double().numpy(), labels.numpy(), 10, 0.2, 0.8)
    assert np.allclose(floored.numpy(), expected, rtol=1e-5)
    assert floored.min() > phi.min()  # the floor binds here


def test_prototypes_fit_recovers_separated_groups():
    torch.manual_seed(0)
    centres = F.normalize(torch.randn(4, 8), dim=1)
    groups = torch.arange(40) % 4
    features = centres[groups] + 0.05 * torch.randn(40, 8)
    prototypes = Prototypes(40, 8, clusters=4)
    prototypes.fit(features, temperature=0.2, seed=0, restarts=5)
    assert nmi(groups.numpy(), prototypes.labels.numpy()) == 1.0
    assert torch.allclose(prototypes.centroids.norm(dim=1), torch.ones(4))
    assert prototypes.concentration.mean().item() == pytest.approx(0.2, rel=1e-5)


# -- the method --------------------------------------------------------------------------------


def tiny_parts(*extra: str):
    return build_parts(build_config(overrides=TINY + list(extra)))


def training_images(parts) -> TrainingImages:
    train = parts.splits.train
    return TrainingImages(train.images, train.labels, parts.views, parts.device, 512)


def test_prototypes_enter_the_loss_after_warm_up_and_their_diagnostics_are_logged():
    torch.manual_seed(0)
    parts = tiny_parts()
    method = parts.method
    batch = Batch(parts.views(parts.splits.train.images[:32], 2), torch.arange(32))
    assert method.on_epoch_start(0, training_images(parts)) == {}
    out = method.training_step(batch)
    assert "proto_nce" not in out.logs and torch.equal(out.loss, out.logs["info_nce"])
    logs = method.on_epoch_start(1, training_images(parts))
    for k in (10, 20):
        assert 0.0 < logs[f"k{k}_pseudo_label_nmi"] <= 1.0
        assert sum(logs[f"k{k}_cluster_size_histogram"].values()) == k
    out = method.training_step(batch)
    assert torch.allclose(out.loss, out.logs["info_nce"] + out.logs["proto_nce"])
    out.loss.backward()
    assert all(p.grad is None for p in method.momentum_encoder.parameters())
    assert all(p.grad is not None for p in method.projector.parameters())


def test_sampled_prototype_negatives_keep_the_batch_own_prototypes():
    torch.manual_seed(0)
    parts = tiny_parts("method.prototype_negatives=3", "method.warmup_epochs=0")
    method = parts.method
    method.on_epoch_start(0, training_images(parts))
    indices = torch.arange(5)
    for prototypes in method.prototypes:
        own = set(prototypes.labels[indices].tolist())
        included = method._included(prototypes, indices)
        assert included.sum() == len(own) + 3
        assert own <= set(included.nonzero().squeeze(1).tolist())


@pytest.mark.parametrize(
    "override, message",
    [
        ("method.granularities=[10,10]", "granularities must differ"),
        ("method.granularities=[1]", "'method.granularities.0'"),
        ("method.granularities=[]", "'method.granularities'"),
    ],
)
def test_bad_options_are_reported(override, message):
    with pytest.raises(UserError, match=message):
        build_config(overrides=TINY + [override])


def test_more_clusters_than_images_is_refused():
    with pytest.raises(UserError, match="method.granularities: 5000 clusters exceed the 1438 training images"):
        tiny_parts("method.granularities=[10,5000]")


def test_unlabelled_data_needs_cluster_counts_and_logs_no_nmi(tmp_path):
    data = tmp_path / "unlabelled.npz"
    np.savez(data, x=np.random.default_rng(0).integers(0, 256, (40, 8, 8), dtype=np.uint8))
    unlabelled = ["data.dataset=npz", f"data.root={data}", "optim.batch_size=8", "method.queue_size=16"]
    with pytest.raises(UserError, match="set the number of clusters with --set clusters=K"):
        build_parts(build_config(overrides=TINY + unlabelled + ["method.granularities=[3,5]"]))
    # One granularity, K, by default.
    parts = build_parts(build_config(overrides=TINY + unlabelled + ["clusters=4", "method.granularities=null"]))
    assert [p.num_clusters for p in parts.method.prototypes] == [4]
    parts = build_parts(build_config(overrides=TINY + unlabelled + ["clusters=3", "method.granularities=[3,5]"]))
    logs = parts.method.on_epoch_start(1, training_images(parts))
    assert "k3_pseudo_label_nmi" not in logs and logs["k5_clusters_empty"] == 0


def test_resumed_run_equals_uninterrupted_run(tmp_path, monkeypatch, ctrl_c_at_step):
    data = tmp_path / "data.npz"
    generator = np.random.default_rng(0)
    np.savez(data, x=generator.integers(0, 256, (60, 8, 8), dtype=np.uint8), y=np.arange(60) % 3)
    config = build_config(
        flags={"train.epochs": 3, "data.dataset": "npz", "data.root": str(data)},
        # The prototype term at half weight in epoch 2, where the run is stopped: the resumed run must know it.
        overrides=TINY + ["optim.batch_size=8", "method.queue_size=16", "method.granularities=[3,6]", "method.proto_ramp_epochs=2"],
    )
    whole, interrupted = tmp_path / "whole", tmp_path / "interrupted"
    clusterclr.train(config, out=whole)
    # Ctrl-C at step 3 of epoch 2: a mid-epoch checkpoint, resumed without on_epoch_start.
    ctrl_c_at_step(PCL, 9)
    with pytest.raises(Interrupted, match="at epoch 2, step 3 of 6"):
        clusterclr.train(config, out=interrupted)
    monkeypatch.undo()
    clusterclr.resume(interrupted)
    losses = lambda run: [(r["step"], r["loss"]) for r in read_log(RunDir(run).log) if r["kind"] == "step"]  # noqa: E731
    assert losses(interrupted) == losses(whole)
    a = torch.load(RunDir(whole).checkpoint, weights_only=True)["method"]
    b = torch.load(RunDir(interrupted).checkpoint, weights_only=True)["method"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The prototype term joins after the warm-up epoch, at half weight, then full.
    assert [("proto_nce" in r) for r in read_log(RunDir(whole).log) if r["kind"] == "step"] == [False] * 6 + [True] * 12
    assert [r["proto_fraction"] for r in read_log(RunDir(interrupted).log) if r["kind"] == "method"] == [0.5, 1.0]


def test_the_prototype_term_ramps_in_after_the_warm_up():
    torch.manual_seed(0)
    parts = tiny_parts("method.warmup_epochs=2", "method.proto_ramp_epochs=3", "method.proto_weight=2")
    method, images = parts.method, training_images(parts)
    batch = Batch(parts.views(parts.splits.train.images[:32], 2), torch.arange(32))
    fractions = []
    for epoch in range(6):
        logs = method.on_epoch_start(epoch, images)
        fractions.append(logs.get("proto_fraction", 0.0))
        out = method.training_step(batch)
        expected = out.logs["info_nce"] + (fractions[-1] * 2 * out.logs["proto_nce"] if fractions[-1] else 0)
        assert out.loss.item() == pytest.approx(float(expected), rel=1e-6)
    assert fractions == pytest.approx([0, 0, 1 / 3, 2 / 3, 1, 1])

