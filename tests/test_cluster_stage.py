"""The clustering stage on frozen features: multi-head classifier, SCAN and TEMI training, head selection, resuming."""

import io

import pytest
import torch

from clusterclr.clustering.metrics import cluster_accuracy
from clusterclr.config import StageConfig
from clusterclr.configure import build_config
from clusterclr.errors import UserError
from clusterclr.losses.scan import scan_loss
from clusterclr.models.cluster_heads import MultiHeadClassifier, lowest_loss_head
from clusterclr.stage.graph import neighbour_graph
from clusterclr.stage.trainer import ClusterStage


def planted_blobs(per_blob=30, blobs=10, dim=32, seed=0):
    """Well-separated Gaussian blobs: centres ~N(0, I) (about 8 apart), spread 0.2 per dimension."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(blobs, dim, generator=g)
    labels = torch.arange(blobs).repeat_interleave(per_blob)
    return centres[labels] + 0.2 * torch.randn(len(labels), dim, generator=g), labels


FAST = dict(neighbours=10, batch_size=100, heads=4, epochs=30)


def make(features, clusters=10, seed=0, graph=None, **settings) -> ClusterStage:
    return ClusterStage(features, StageConfig(**{**FAST, **settings}), clusters, seed, graph)


def save_and_load(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer)


# -- the multi-head classifier --------------------------------------------------------------


@pytest.mark.parametrize("hidden_dim", [None, 16])
def test_multi_head_classifier_runs_heads_independently(hidden_dim):
    heads = MultiHeadClassifier(8, 5, heads=3, hidden_dim=hidden_dim, generator=torch.Generator().manual_seed(0))
    x = torch.randn(7, 8)
    logits = heads(x)
    assert logits.shape == (3, 7, 5)
    for h in range(3):
        kept = heads.keep(h)
        assert kept.heads == 1
        torch.testing.assert_close(kept(x)[0], logits[h])
    # Each head's output depends on its own weights only.
    with torch.no_grad():
        heads.weights[-1][1].add_(1.0)
    changed = heads(x)
    torch.testing.assert_close(changed[[0, 2]], logits[[0, 2]])
    assert not torch.allclose(changed[1], logits[1])


def test_multi_head_classifier_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = MultiHeadClassifier(4, 3, heads=2, generator=torch.Generator().manual_seed(5))
    b = MultiHeadClassifier(4, 3, heads=2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_cosine_heads_give_bounded_logits():
    heads = MultiHeadClassifier(6, 4, heads=2, hidden_dim=5, cosine=True)
    logits = heads(torch.randn(9, 6) * 100)
    assert logits.abs().max() <= 1 + 1e-6
    assert len(heads.biases) == 1  # the last layer is a cosine, without bias


def test_lowest_loss_head_ignores_non_finite_losses():
    assert lowest_loss_head(torch.tensor([0.5, -1.0, 0.2])) == 1
    assert lowest_loss_head(torch.tensor([float("nan"), 0.3, float("-inf")])) == 1


# -- training on planted clusters -----------------------------------------------------------


@pytest.mark.parametrize("method", ["scan", "temi"])
def test_stage_recovers_planted_clusters(method):
    features, labels = planted_blobs()
    stage = make(features, loss=method)
    assert stage.fit()
    result = stage.result()
    assert cluster_accuracy(labels.numpy(), result.assignments.numpy()) == 1.0
    assert result.probabilities.shape == (300, 10)
    torch.testing.assert_close(result.probabilities.sum(1), torch.ones(300))
    assert result.confidences.min() > 0.5
    assert result.head_losses.shape == (4,)


def test_kept_head_is_the_one_with_the_lowest_loss_over_all_neighbours():
    features, _ = planted_blobs(seed=1)
    stage = make(features, epochs=3, heads=5)
    scan = stage.objective
    stage.fit()
    result = stage.result()
    # Recompute each head's SCAN loss over every (image, neighbour) pair, independently of the stage.
    logits = scan.heads(stage.inputs).detach()
    pairs = torch.arange(300).repeat_interleave(10), stage.graph.indices.reshape(-1)
    consistency = scan_loss(logits[:, pairs[0]], logits[:, pairs[1]]).consistency
    entropy = scan_loss(logits, logits).entropy
    expected = consistency - 5.0 * entropy
    torch.testing.assert_close(result.head_losses, expected.double(), rtol=1e-5, atol=1e-5)
    assert result.kept_head == int(expected.argmin())
    assert len(set(expected.tolist())) == 5  # the heads differ, so the choice means something
    torch.testing.assert_close(result.probabilities, logits[result.kept_head].softmax(-1))


def test_stage_is_deterministic_given_its_seed():
    features, _ = planted_blobs()
    runs = []
    for seed in (0, 0, 1):
        stage = make(features, seed=seed, loss="temi", epochs=2)
        stage.fit()
        runs.append(stage.result().probabilities)
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_predict_reads_new_features_like_the_training_ones():
    features, _ = planted_blobs()
    stage = make(features, epochs=1)
    with pytest.raises(RuntimeError):
        stage.predict(features)
    stage.fit()
    torch.testing.assert_close(stage.predict(features[:7]), stage.result().probabilities[:7])


def test_self_labelling_trains_the_kept_head_on_its_confident_images():
    features, labels = planted_blobs()
    stage = make(features, self_label_epochs=5, confidence=0.9)
    stage.fit()
    assert stage.phase == "done" and stage.objective.head.heads == 1
    assert cluster_accuracy(labels.numpy(), stage.result().assignments.numpy()) == 1.0
    # The kept head moved away from where the clustering phase left it.
    unlabelled = make(features, self_label_epochs=0, confidence=0.9)
    unlabelled.fit()
    assert unlabelled.kept_head == stage.kept_head
    assert not torch.equal(unlabelled.objective.head.weights[0], stage.objective.head.weights[0])


def test_progress_bar_shows_rate(capsys):
    features, _ = planted_blobs()
    make(features, epochs=2).fit(progress=True)
    err = capsys.readouterr().err
    assert "6/6" in err and "step/s" in err


# -- resuming --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, stop_after",
    [("scan", 7), ("scan", 12), ("scan", 14), ("temi", 5), ("temi", 9)],
    # 3 steps an epoch, 4 clustering epochs (12 steps), then 2 self-labelling epochs (6 steps):
    # mid-epoch, at the phase boundary, inside self-labelling; TEMI carries a teacher and a marginal.
)
def test_an_interrupted_stage_resumes_exactly(method, stop_after):
    features, _ = planted_blobs(seed=2)
    options = dict(loss=method, epochs=4, self_label_epochs=2, confidence=0.5)
    whole = make(features, **options)
    whole.fit()

    first = make(features, **options)
    steps = iter(range(10**6))
    assert not first.fit(should_stop=lambda: next(steps) >= stop_after)
    assert first.steps_done == stop_after
    second = make(features, **options)
    second.load_state_dict(save_and_load(first.state_dict()))
    assert second.steps_done == stop_after
    assert second.fit()

    for resumed, uninterrupted in zip(second.objective.head.parameters(), whole.objective.head.parameters()):
        assert torch.equal(resumed, uninterrupted)
    assert torch.equal(second.result().probabilities, whole.result().probabilities)
    assert torch.equal(second.result().head_losses, whole.result().head_losses)


def test_resuming_with_other_options_or_features_is_refused():
    features, _ = planted_blobs()
    stage = make(features, epochs=1)
    state = stage.state_dict()
    with pytest.raises(UserError, match="other options"):
        make(features, epochs=2).load_state_dict(state)
    with pytest.raises(UserError, match="other features"):
        make(features + 1, epochs=1).load_state_dict(state)


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "features, options, message",
    [
        (torch.empty(0, 8), dict(clusters=2), "non-empty"),
        (torch.randn(1, 8), dict(clusters=2), "at least 2"),
        (torch.tensor([[0.0, float("nan")], [1.0, 2.0], [3.0, 4.0]]), dict(clusters=2, neighbours=1), "NaN"),
        (torch.randn(5, 8), dict(clusters=6, neighbours=2), "6 clusters of 5 images"),
        (torch.randn(5, 8), dict(clusters=2, neighbours=5), "neighbours must be between 1 and"),
    ],
)
def test_bad_input_is_a_user_error(features, options, message):
    with pytest.raises(UserError, match=message):
        make(features, **options)


@pytest.mark.parametrize(
    "override, message",
    [
        ("stage.clusters=1", "'stage.clusters'"),
        ("stage.loss=kmeans", "'stage.loss'"),
        ("stage.beta=0", "'stage.beta'"),
        ("stage.confidence=1.0", "'stage.confidence'"),
        ("stage.lr=0", "'stage.lr'"),
    ],
)
def test_bad_options_are_user_errors(override, message):
    with pytest.raises(UserError, match=message):
        build_config(overrides=[override])


def test_the_loss_defaults_for_neighbours_follow_the_papers():
    assert StageConfig().neighbours == 20
    assert StageConfig(loss="temi").neighbours == 50
    assert StageConfig(neighbours=7).neighbours == 7


def test_a_given_graph_is_used_instead_of_mining_again():
    features, labels = planted_blobs()
    graph = neighbour_graph(features, 15)
    stage = make(features, graph=graph)
    assert torch.equal(stage.graph.indices, graph.indices[:, :10])
    with pytest.raises(ValueError):
        make(features, graph=graph, neighbours=20)
