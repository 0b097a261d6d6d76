"""Evaluation protocols: the solvers against independent references, the subsets, the bookkeeping,
the command line's errors, and one end-to-end run of every protocol on a tiny trained model."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import clusterclr
from clusterclr.cli import main
from clusterclr.clustering.metrics import majority_mapping, purity
from clusterclr.configure import build_config
from clusterclr.data.base import ImageDataset
from clusterclr.errors import UserError
from clusterclr.evaluate.context import EvalContext
from clusterclr.evaluate.features import Embeddings
from clusterclr.evaluate.linear import fit_logistic, linear_probe, topk_accuracy
from clusterclr.evaluate.protocols import head, kmeans, knn
from clusterclr.evaluate.protocols.kmeans import partition_scores
from clusterclr.evaluate.protocols.options import ProtocolOptions
from clusterclr.evaluate.protocols.transfer import adapt
from clusterclr.evaluate.results import merge_metrics, summarise, update_metrics
from clusterclr.evaluate.subsets import balanced_subset, stratified_split


@pytest.fixture(autouse=True, scope="module")
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# --- linear probe --------------------------------------------------------------------------------


def test_linear_probe_separates_linearly_separable_features():
    g = torch.Generator().manual_seed(0)
    directions = torch.randn(5, 32, generator=g)
    labels = torch.randint(0, 5, (600,), generator=g)
    # Classes differ along their own direction by far more than the noise: a linear map separates them.
    features = 4 * directions[labels] + 0.5 * torch.randn(600, 32, generator=g) + 3.0
    result = linear_probe(features[:400], labels[:400], features[400:], labels[400:], seed=0, weight_decays=(1e-4, 1e-2))
    assert result["top1"] >= 0.99 and result["top5"] == 1.0
    assert result["weight_decay"] in (1e-4, 1e-2)


def test_logistic_regression_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 6, generator=g, dtype=torch.float64) * torch.tensor([1, 2, 3, 0.5, 1, 4.0]) + 1
    y = (x[:, 0] + 0.3 * x[:, 1] + torch.randn(300, generator=g, dtype=torch.float64) > 1).long() + (x[:, 2] > 1).long()
    weight_decay = 1e-2
    model = fit_logistic(x, y, 3, weight_decay)
    standardised = ((x - x.mean(0)) / x.std(0, unbiased=False)).numpy()
    # scikit-learn minimises C * sum CE + ||W||^2 / 2, ours mean CE + wd / 2 ||W||^2: C = 1 / (wd N).
    reference = LogisticRegression(C=1 / (weight_decay * len(x)), tol=1e-10, max_iter=10_000).fit(standardised, y.numpy())
    np.testing.assert_allclose(torch.softmax(model.logits(x), 1).numpy(), reference.predict_proba(standardised), atol=1e-5)
    weight, bias = model.folded()
    torch.testing.assert_close(x @ weight.T + bias, model.logits(x))


def test_topk_accuracy_by_hand():
    scores = np.array([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1], [0.2, 0.3, 0.5]])
    labels = np.array([2, 0, 0])
    assert topk_accuracy(scores, labels, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(scores, labels, 2) == pytest.approx(2 / 3)
    assert topk_accuracy(scores, labels, 5) == 1.0  # k clipped to the 3 classes


# --- clustering: over-clustering and purity --------------------------------------------------------


def test_overclustering_maps_each_cluster_to_its_majority_class():
    # 4 clusters over 2 classes: clusters 0 and 1 are mostly class 0, cluster 2 class 1, cluster 3 empty.
    bank_labels = np.array([0, 0, 1, 0, 0, 1, 1, 1, 1])
    bank_clusters = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    mapping = majority_mapping(bank_labels, bank_clusters, 4)
    # The empty cluster maps to the most common class overall (1: five of nine).
    assert mapping.tolist() == [0, 0, 1, 1]
    test_labels = torch.tensor([0, 0, 1, 1, 0])
    test_clusters = np.array([0, 1, 2, 1, 3])
    scores = partition_scores(torch.from_numpy(bank_labels), bank_clusters, test_labels, test_clusters, 4)
    # Mapped: 0, 0, 1, 0, 1 against 0, 0, 1, 1, 0: three right.
    assert scores["majority_acc"] == pytest.approx(3 / 5)
    assert scores["empty_clusters"] == 1


def test_purity_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 1])
    clusters = np.array([5, 5, 7, 7, 7, 9, 9, 9, 5, 9])
    # Cluster 5: classes {0, 0, 2} -> 2; cluster 7: {0, 1, 1} -> 2; cluster 9: {2, 2, 2, 1} -> 3.
    assert purity(labels, clusters) == pytest.approx(7 / 10)
    assert purity(labels, np.arange(10)) == 1.0  # singletons are pure: read purity with K


# --- subsets ------------------------------------------------------------------------------------


def test_balanced_subsets_are_balanced_and_reproducible():
    labels = torch.arange(1000) % 10
    labels[:300] = 3  # unbalanced classes; the subset is balanced anyway
    for fraction, per_class in ((0.01, 1), (0.1, 10)):
        subset = balanced_subset(labels, fraction, seed=0)
        counts = labels[subset].bincount(minlength=10)
        assert (counts == per_class).all() and len(subset.unique()) == len(subset)
        assert torch.equal(subset, balanced_subset(labels, fraction, seed=0))
        assert not torch.equal(subset, balanced_subset(labels, fraction, seed=1))
    with pytest.raises(UserError, match="needs 100 images of each class but class 0 has 70"):
        balanced_subset(labels, 1.0, seed=0)


def test_stratified_split_keeps_every_class_on_both_sides():
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 1)
    kept, held = stratified_split(labels, 0.2, seed=0)
    assert sorted(torch.cat([kept, held]).tolist()) == list(range(14))
    assert labels[held].bincount(minlength=3).tolist() == [2, 1, 0]


# --- protocols on hand-made features ---------------------------------------------------------------


def feature_context(bank, bank_labels, test, test_labels, probabilities=None, method=None) -> EvalContext:
    """A context whose features are given, so the protocol's arithmetic is tested without a model."""
    head = None if method is None else method.cluster_head_module()
    model = SimpleNamespace(method=method, config=build_config(), cluster_head=lambda: head)
    images = lambda n: torch.zeros(n, 1, 2, 2, dtype=torch.uint8)  # noqa: E731 (never looked at)
    ctx = EvalContext(model, "hand", ImageDataset(images(len(bank)), bank_labels), ImageDataset(images(len(test)), test_labels),
                      "test", int(bank_labels.max()) + 1, progress=False)
    bank_probs, test_probs = probabilities if probabilities is not None else (None, None)
    ctx.set_embeddings("bank", Embeddings(bank, bank_probs))
    ctx.set_embeddings("test", Embeddings(test, test_probs))
    return ctx


def brute_force_knn_topk(bank, bank_labels, test, k, temperature, classes):
    similarity = F.normalize(test.double(), dim=1) @ F.normalize(bank.double(), dim=1).T
    scores = torch.zeros(len(test), classes, dtype=torch.float64)
    for q in range(len(test)):
        nearest = similarity[q].argsort(descending=True)[:k]
        for i in nearest:
            scores[q, bank_labels[i]] += torch.exp(similarity[q, i] / temperature)
    return scores


def test_knn_protocol_equals_brute_force_and_top5_is_at_least_top1():
    g = torch.Generator().manual_seed(2)
    bank, test = torch.randn(200, 8, generator=g), torch.randn(60, 8, generator=g)
    bank_labels, test_labels = torch.randint(0, 12, (200,), generator=g), torch.randint(0, 12, (60,), generator=g)
    ctx = feature_context(bank, bank_labels, test, test_labels)
    result = knn.run(ctx, ProtocolOptions(knn_k=(5, 20), knn_temperature=0.1), seed=0)
    for k in (5, 20):
        scores = brute_force_knn_topk(bank, bank_labels, test, k, 0.1, 12).numpy()
        assert result[f"k{k}_top1"] == pytest.approx(topk_accuracy(scores, test_labels.numpy(), 1))
        assert result[f"k{k}_top5"] == pytest.approx(topk_accuracy(scores, test_labels.numpy(), 5))
        assert result[f"k{k}_top5"] >= result[f"k{k}_top1"]


def test_kmeans_protocol_overclusters_separated_blobs_perfectly():
    g = torch.Generator().manual_seed(3)
    centres = 10 * torch.eye(8)[:4]
    labels = torch.arange(400) % 4
    # Each class is two tight sub-blobs: 8 clusters split classes but never mix them.
    offsets = 3 * torch.eye(8)[4 + (torch.arange(400) // 4) % 2]
    features = centres[labels] + offsets + 0.05 * torch.randn(400, 8, generator=g)
    ctx = feature_context(features[:300], labels[:300], features[300:], labels[300:])
    result = kmeans.run(ctx, ProtocolOptions(clusters=(4, 8)), seed=0)
    assert result["k4_acc"] == 1.0 and result["k4_nmi"] == pytest.approx(1.0)
    assert result["k8_majority_acc"] == 1.0 and result["k8_purity"] == 1.0
    assert result["k8_acc"] < 1.0  # one-to-one matching cannot use the extra clusters: why majority_acc exists


def test_head_protocol_needs_a_head():
    method = SimpleNamespace(name="simclr", cluster_head_module=lambda: None)
    x, y = torch.randn(4, 2), torch.tensor([0, 1, 0, 1])
    with pytest.raises(UserError, match="simclr has no cluster head; --protocol head works for runs of: cc, center_predictor"):
        head.run(feature_context(x, y, x, y, method=method), ProtocolOptions(), 0)
    probabilities = torch.eye(2)[y].float()
    with_head = SimpleNamespace(name="cc", cluster_head_module=lambda: torch.nn.Identity())
    result = head.run(feature_context(x, y, x, y, (probabilities, probabilities), with_head), ProtocolOptions(), 0)
    assert result["acc"] == 1.0 and result["purity"] == 1.0


# --- transfer: fitting data set B to the model ----------------------------------------------------


def test_transfer_adapts_channels_and_size():
    grey_model = SimpleNamespace(method=SimpleNamespace(data=SimpleNamespace(channels=1, image_size=(8, 8))))
    colour_model = SimpleNamespace(method=SimpleNamespace(data=SimpleNamespace(channels=3, image_size=(8, 8))))
    rgb = ImageDataset(torch.tensor([[[[200]], [[100]], [[10]]]], dtype=torch.uint8).expand(1, 3, 8, 8).clone(), torch.tensor([0]))
    grey, done = adapt(rgb, grey_model)
    assert grey.images.shape == (1, 1, 8, 8) and done == ["3 -> 1 channel (BT.601 luminance)"]
    assert int(grey.images[0, 0, 0, 0]) == round(0.299 * 200 + 0.587 * 100 + 0.114 * 10)
    small = ImageDataset(torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4), torch.tensor([0]))
    colour, done = adapt(small, colour_model)
    assert colour.images.shape == (1, 3, 8, 8) and torch.equal(colour.images[:, 0], colour.images[:, 2])
    assert done == ["1 -> 3 channels (grey repeated)", "resized 4x4 -> 8x8 (bilinear, antialiased)"]


# --- metrics.json and summaries ------------------------------------------------------------------


def test_results_merge_into_metrics_json_keeping_other_keys(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"knn_acc": 0.5, "linear": {"old": 1}, "transfer": {"mnist": {"x": 1}}}))
    merge_metrics(path, ("linear",), {"new": 2})
    merge_metrics(path, ("transfer", "cifar10"), {"y": 3})
    update_metrics(path, {"knn_acc": 0.6})  # what a plain re-evaluation does
    assert json.loads(path.read_text()) == {
        "knn_acc": 0.6, "linear": {"new": 2}, "transfer": {"mnist": {"x": 1}, "cifar10": {"y": 3}},
    }
    path.write_text("{not json")
    with pytest.raises(UserError, match="cannot update .*metrics.json: it is not readable JSON"):
        merge_metrics(path, ("linear",), {})


def test_summary_over_seeds():
    summary = summarise([{"top1": 0.5, "wd": 1e-3}, {"top1": 0.7, "wd": 1e-3}, {"top1": 0.6, "wd": 1e-2}])
    assert summary["top1"]["mean"] == pytest.approx(0.6) and summary["top1"]["std"] == pytest.approx(0.1)
    assert summary["top1"]["values"] == [0.5, 0.7, 0.6]
    assert summarise([{"top1": 0.5}])["top1"]["std"] is None


# --- the command line ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A one-epoch SimCLR run on digits."""
    run = tmp_path_factory.mktemp("protocols") / "run"
    overrides = ["model.width=0.125", "optim.batch_size=128", "train.progress=false", "train.eval_every=0",
                 "train.num_threads=1", "method.projection_hidden_dim=64", "method.projection_dim=32"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clusterclr.train(build_config(flags={"train.epochs": 1}, overrides=overrides), out=run)
    return run


@pytest.mark.parametrize(("args", "message"), [
    (["--protocol", "knn", "--clusters", "20"], "--clusters applies to --protocol kmeans, which is not being run"),
    (["--clusters", "20"], "--clusters is an option of --protocol"),
    (["--seeds", "0", "1"], "--seeds is an option of --protocol"),
    (["--protocol", "transfer"], "--protocol transfer needs data set B"),
    (["--protocol", "transfer", "--set", "model.width=1"], "--set here names data set B only (data.KEY=VALUE), got model.width=1"),
    (["--protocol", "semi", "--semi-fractions", "0.01", "1.5"], "--semi-fractions must lie in (0, 1]"),
    (["--protocol", "kmeans", "--clusters", "0"], "--clusters must be positive"),
    (["--protocol", "linear", "--seeds", "1", "1"], "--seeds must be distinct non-negative integers"),
    (["--protocol", "head"], "simclr has no cluster head; --protocol head works for runs of: cc, center_predictor"),
    (["--protocol", "kmeans", "--clusters", "5000"], "cannot make 5000 clusters of the 1438 training images of digits"),
])
def test_bad_protocol_options_are_one_line_errors(run, capsys, args, message):
    assert main(["evaluate", str(run), *args]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("clusterclr: error:")]
    assert len(errors) == 1 and message in errors[0]


def test_unknown_protocol_is_refused(run, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(run), "--protocol", "lineaer"])
    assert exit_info.value.code == 2 and "invalid choice: 'lineaer'" in capsys.readouterr().err


def test_every_protocol_runs_from_the_command_line_and_lands_in_metrics_json(run, tmp_path, capsys):
    # Data set B for transfer: colour 16×16 images, so the grey 8×8 model needs both conversions.
    g = np.random.default_rng(0)
    np.savez(tmp_path / "b.npz", x=g.integers(0, 256, (60, 16, 16, 3), dtype=np.uint8), y=np.arange(60) % 3,
             x_test=g.integers(0, 256, (30, 16, 16, 3), dtype=np.uint8), y_test=np.arange(30) % 3)
    before = json.loads((run / "metrics.json").read_text())
    assert main(["evaluate", str(run), "--protocol", "knn", "linear", "kmeans", "semi", "transfer",
                 "--seeds", "0", "1", "--knn-k", "5", "20", "--clusters", "10", "20", "--semi-epochs", "1",
                 "--set", "data.dataset=npz", f"data.root={tmp_path / 'b.npz'}"]) == 0
    table = capsys.readouterr().out
    assert re.search(r"^linear +top1 +0\.\d{4} ± 0\.\d{4} +2$", table, re.MULTILINE)
    assert re.search(r"^knn +k20_top5 +[01]\.\d{4} +1$", table, re.MULTILINE)
    metrics = json.loads((run / "metrics.json").read_text())
    assert {key: metrics[key] for key in before} == before  # the training's own scores are kept
    assert metrics["knn"]["seeds"] == [0] and metrics["linear"]["seeds"] == [0, 1]  # kNN is deterministic
    assert set(metrics["knn"]["metrics"]) == {"k5_top1", "k5_top5", "k20_top1", "k20_top5"}
    assert {"k20_majority_acc", "k20_purity", "k10_nmi"} <= set(metrics["kmeans"]["metrics"])
    assert metrics["semi"]["settings"]["labelled_images"] == {"pct1": 10, "pct10": 140}
    assert 0 <= metrics["semi"]["metrics"]["pct10_top1"]["mean"] <= 1
    transfer = metrics["transfer"]["npz"]
    assert transfer["settings"]["trained_on"] == "digits"
    assert transfer["settings"]["conversions"] == ["3 -> 1 channel (BT.601 luminance)",
                                                   "resized 16x16 -> 8x8 (bilinear, antialiased)"]
    assert {"knn_k20_top1", "linear_top1", "linear_top5"} <= set(transfer["metrics"])
    assert len(metrics["linear"]["metrics"]["top1"]["values"]) == 2
