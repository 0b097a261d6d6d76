"""Properties of the frozen-feature evaluation: metrics, weighted kNN, k-means."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from clusterclr.clustering.kmeans import KMeansResult, assign, kmeans
from clusterclr.clustering.metrics import (
    ari,
    cluster_accuracy,
    clustering_scores,
    contingency,
    nmi,
)
from clusterclr.evaluate.knn import knn_accuracy, knn_predict


def _random_labellings(seed: int, count: int):
    """Pairs of labellings with varied sizes, label counts and label values."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        n = int(rng.integers(1, 200))
        n_classes = int(rng.integers(1, 12))
        n_clusters = int(rng.integers(1, 12))
        # Sparse, non-contiguous label values exercise the remapping.
        class_values = rng.choice(1000, size=n_classes, replace=False)
        cluster_values = rng.choice(1000, size=n_clusters, replace=False)
        labels_true = class_values[rng.integers(0, n_classes, n)]
        yield labels_true, cluster_values[rng.integers(0, n_clusters, n)]


# --- metrics -----------------------------------------------------------------


def test_contingency_counts_pairs_with_noncontiguous_labels():
    table = contingency(np.array([7, 7, 3, 3, 3]), np.array([10, 2, 2, 2, 10]))
    # Rows: classes 3, 7; columns: clusters 2, 10.
    np.testing.assert_array_equal(table, [[2, 1], [1, 1]])


@pytest.mark.parametrize("seed", range(3))
def test_nmi_and_ari_match_sklearn_on_random_labellings(seed):
    for y, p in _random_labellings(seed, 100):
        assert nmi(y, p) == pytest.approx(normalized_mutual_info_score(y, p), abs=1e-12)
        assert ari(y, p) == pytest.approx(adjusted_rand_score(y, p), abs=1e-12)


def test_nmi_and_ari_match_sklearn_on_correlated_labellings():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 6, 300)
    for noise in (0.0, 0.2, 0.5, 0.9):
        p = np.where(rng.random(300) < noise, rng.integers(0, 8, 300), y + 40)
        assert nmi(y, p) == pytest.approx(normalized_mutual_info_score(y, p), abs=1e-12)
        assert ari(y, p) == pytest.approx(adjusted_rand_score(y, p), abs=1e-12)


@pytest.mark.parametrize(
    ("y", "p"),
    [
        ([0, 0, 0], [5, 5, 5]),  # both constant
        ([0, 1, 2], [0, 0, 0]),  # constant clustering
        ([4, 4, 4, 4], [0, 1, 2, 3]),  # constant classes, all singletons
        ([0, 1, 2], [3, 4, 5]),  # both all-singletons
        ([3], [9]),  # one sample
        ([0, 0, 1, 1], [0, 1, 0, 1]),  # independent: MI = 0, ARI < 0
        ([0, 0, 1, 1], [1, 1, 0, 0]),  # relabelled perfect match
    ],
)
def test_degenerate_cases_follow_sklearn(y, p):
    assert nmi(y, p) == pytest.approx(normalized_mutual_info_score(y, p), abs=1e-12)
    assert ari(y, p) == pytest.approx(adjusted_rand_score(y, p), abs=1e-12)


def test_sklearn_conventions_for_constant_labellings():
    assert nmi([1, 1, 1], [2, 2, 2]) == 1.0
    assert nmi([0, 1, 1], [2, 2, 2]) == 0.0
    assert ari([1, 1, 1], [2, 2, 2]) == 1.0


def test_every_score_is_exactly_one_for_any_relabelling_of_a_perfect_clustering():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 5, 100)
    for perm in itertools.permutations(range(5)):
        p = np.array(perm)[y] * 3 + 11
        assert clustering_scores(y, p) == {"nmi": 1.0, "acc": 1.0, "ari": 1.0}


def _brute_force_accuracy(y: np.ndarray, p: np.ndarray) -> float:
    classes, clusters = np.unique(y), np.unique(p)
    best = 0
    # Injective maps clusters -> classes; extra clusters map to "no class".
    slots = list(classes) + [None] * max(0, len(clusters) - len(classes))
    for image in itertools.permutations(slots, len(clusters)):
        mapping = dict(zip(clusters, image))
        best = max(best, sum(mapping[c] == t for t, c in zip(y, p)))
    return best / len(y)


@pytest.mark.parametrize(("n_classes", "n_clusters"), [(4, 4), (3, 5), (5, 3)])
def test_accuracy_equals_brute_force_matching(n_classes, n_clusters):
    rng = np.random.default_rng(n_classes * 10 + n_clusters)
    for _ in range(20):
        y = rng.integers(0, n_classes, 30)
        p = rng.integers(0, n_clusters, 30)
        assert cluster_accuracy(y, p) == pytest.approx(_brute_force_accuracy(y, p))


def test_accuracy_counts_unmatched_clusters_as_wrong():
    # Class 0 is split over two clusters; only one of them can be matched.
    assert cluster_accuracy([0, 0, 0, 0, 1, 1], [0, 0, 0, 2, 1, 1]) == pytest.approx(5 / 6)
    # One cluster for two classes: the smaller class is lost.
    assert cluster_accuracy([0, 0, 0, 1], [4, 4, 4, 4]) == pytest.approx(3 / 4)


def test_clustering_scores_keys_and_types():
    scores = clustering_scores(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0]))
    assert scores == {"nmi": 1.0, "acc": 1.0, "ari": 1.0}
    assert all(type(v) is float for v in scores.values())


@pytest.mark.parametrize("fn", [contingency, nmi, ari, cluster_accuracy, clustering_scores])
def test_metrics_reject_bad_label_arrays(fn):
    with pytest.raises(ValueError, match="length"):
        fn(np.zeros(3, int), np.zeros(4, int))
    with pytest.raises(ValueError, match="1-D"):
        fn(np.zeros((2, 2), int), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="empty"):
        fn(np.zeros(0, int), np.zeros(0, int))


# --- kNN ---------------------------------------------------------------------


def _naive_knn_scores(bank, bank_labels, queries, k, temperature, num_classes):
    """Reference: full float64 cosine-similarity matrix, topk, exp weights."""
    bank = torch.nn.functional.normalize(bank.double(), dim=1)
    queries = torch.nn.functional.normalize(queries.double(), dim=1)
    sims, idx = (queries @ bank.T).topk(k, dim=1)
    weights = (sims / temperature).exp()
    scores = torch.zeros(len(queries), num_classes, dtype=torch.float64)
    return scores.scatter_add_(1, bank_labels[idx], weights)


def test_knn_classifies_two_tight_groups():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    bank = centres.repeat_interleave(10, dim=0) + 0.01 * torch.randn(20, 3, generator=gen)
    bank_labels = torch.tensor([0] * 10 + [1] * 10)
    # Scaled queries: the classifier must normalise them itself.
    queries = 5.0 * (centres + 0.01 * torch.randn(2, 3, generator=gen))
    scores = knn_predict(bank, bank_labels, queries, k=5)
    assert scores.shape == (2, 2) and scores.dtype == torch.float32
    assert scores.argmax(dim=1).tolist() == [0, 1]
    acc = knn_accuracy(bank, bank_labels, queries, torch.tensor([0, 1]), k=5)
    assert acc == {"top1": 1.0, "top5": 1.0}


@pytest.mark.parametrize(("k", "temperature"), [(1, 0.07), (20, 0.07), (7, 0.5)])
def test_knn_matches_naive_float64_reference(k, temperature):
    gen = torch.Generator().manual_seed(k)
    bank = torch.randn(300, 16, generator=gen)
    bank_labels = torch.randint(0, 10, (300,), generator=gen)
    queries = torch.randn(50, 16, generator=gen)
    scores = knn_predict(bank, bank_labels, queries, k=k, temperature=temperature, num_classes=12)
    expected = _naive_knn_scores(bank, bank_labels, queries, k, temperature, 12)
    assert scores.shape == (50, 12)
    torch.testing.assert_close(scores.double(), expected, rtol=1e-5, atol=1e-6)


def test_knn_clips_k_to_bank_size():
    gen = torch.Generator().manual_seed(3)
    bank = torch.randn(4, 5, generator=gen)
    bank_labels = torch.tensor([0, 1, 1, 2])
    queries = torch.randn(6, 5, generator=gen)
    scores = knn_predict(bank, bank_labels, queries, k=50, temperature=0.3)
    expected = _naive_knn_scores(bank, bank_labels, queries, 4, 0.3, 3)
    torch.testing.assert_close(scores.double(), expected, rtol=1e-5, atol=1e-6)


def test_knn_exclude_self_drops_the_query_itself():
    gen = torch.Generator().manual_seed(4)
    cluster = torch.tensor([1.0, 0.0, 0.0, 0.0]) + 0.05 * torch.randn(6, 4, generator=gen)
    # Row 0 carries a label none of its neighbours share.
    labels = torch.tensor([1, 0, 0, 0, 0, 0])
    with_self = knn_predict(cluster, labels, cluster, k=1)
    without_self = knn_predict(cluster, labels, cluster, k=1, exclude_self=True)
    assert with_self.argmax(dim=1).tolist() == [1, 0, 0, 0, 0, 0]
    assert without_self.argmax(dim=1).tolist() == [0, 0, 0, 0, 0, 0]
    # Each row keeps exactly k neighbours: the same as a naive search over the
    # bank with that row removed.
    for q in range(6):
        rest = torch.cat([cluster[:q], cluster[q + 1 :]])
        rest_labels = torch.cat([labels[:q], labels[q + 1 :]])
        expected = _naive_knn_scores(rest, rest_labels, cluster[q : q + 1], 3, 0.07, 2)
        got = knn_predict(cluster, labels, cluster, k=3, exclude_self=True)[q : q + 1]
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


def test_knn_accuracy_top5_with_many_classes():
    gen = torch.Generator().manual_seed(5)
    bank = torch.randn(200, 8, generator=gen)
    bank_labels = torch.randint(0, 20, (200,), generator=gen)
    queries = torch.randn(40, 8, generator=gen)
    query_labels = torch.randint(0, 20, (40,), generator=gen)
    scores = _naive_knn_scores(bank, bank_labels, queries, 20, 0.07, 20)
    top5 = scores.topk(5, dim=1).indices
    acc = knn_accuracy(bank, bank_labels, queries, query_labels)
    assert acc["top1"] == pytest.approx((top5[:, 0] == query_labels).double().mean().item())
    in_top5 = (top5 == query_labels[:, None]).any(dim=1)
    assert acc["top5"] == pytest.approx(in_top5.double().mean().item())
    assert acc["top1"] <= acc["top5"] < 1.0


def test_knn_rejects_bad_inputs():
    bank, labels = torch.randn(10, 4), torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match="dims differ"):
        knn_predict(bank, labels, torch.randn(3, 5))
    with pytest.raises(ValueError, match="bank_labels"):
        knn_predict(bank, labels[:9], torch.randn(3, 4))
    with pytest.raises(ValueError, match="empty"):
        knn_predict(torch.randn(0, 4), torch.zeros(0, dtype=torch.long), torch.randn(3, 4))
    with pytest.raises(ValueError, match="integer"):
        knn_predict(bank, labels.float(), torch.randn(3, 4))
    with pytest.raises(ValueError, match="query_labels"):
        knn_accuracy(bank, labels, torch.randn(3, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="exclude_self"):
        knn_predict(bank, labels, torch.randn(3, 4), exclude_self=True)


# --- k-means -------------------------------------------------------------------


def _blobs(seed: int, per_blob: int = 50, k: int = 4, dim: int = 8):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=20.0, size=(k, dim))
    labels = np.repeat(np.arange(k), per_blob)
    return centres[labels] + rng.normal(size=(k * per_blob, dim)), labels


def test_kmeans_recovers_separated_blobs_without_faiss_warnings(capfd):
    x, labels = _blobs(0)
    result = kmeans(x, 4)
    assert isinstance(result, KMeansResult)
    assert result.centroids.shape == (4, 8) and result.centroids.dtype == np.float32
    assert result.assignments.shape == (200,) and result.assignments.dtype == np.int64
    assert cluster_accuracy(labels, result.assignments) == 1.0
    # 200 points for 4 centroids is below faiss's default 39 per centroid.
    assert "WARNING" not in capfd.readouterr().err


def test_kmeans_inertia_is_sum_of_squared_distances():
    x, _ = _blobs(1)
    result = kmeans(torch.from_numpy(x), 4)
    x32 = x.astype(np.float32)
    expected = ((x32 - result.centroids[result.assignments]) ** 2).sum()
    assert result.inertia == pytest.approx(float(expected), rel=1e-4)


def test_kmeans_uses_every_point_on_large_data():
    # With faiss's default cap (256 points per centroid) only 512 of these
    # 3000 points would be used for training; the centroid of all points in
    # a single-cluster run must then be their exact mean.
    x = np.random.default_rng(2).normal(size=(3000, 3)).astype(np.float32)
    result = kmeans(x, 1, restarts=1)
    np.testing.assert_allclose(result.centroids[0], x.mean(axis=0), atol=1e-5)


def test_kmeans_is_deterministic_for_a_seed():
    x, _ = _blobs(3, per_blob=40, k=6)
    x += np.random.default_rng(3).normal(scale=15.0, size=x.shape)  # overlapping clusters
    first, second = kmeans(x, 6, seed=7), kmeans(x, 6, seed=7)
    np.testing.assert_array_equal(first.assignments, second.assignments)
    np.testing.assert_array_equal(first.centroids, second.centroids)
    assert first.inertia == second.inertia


def test_spherical_kmeans_gives_unit_centroids():
    x, labels = _blobs(4)
    result = kmeans(x, 4, spherical=True)
    np.testing.assert_allclose(np.linalg.norm(result.centroids, axis=1), 1.0, atol=1e-5)
    assert cluster_accuracy(labels, result.assignments) == 1.0


@pytest.mark.parametrize("k", [0, 11])
def test_kmeans_rejects_k_outside_1_to_n(k):
    with pytest.raises(ValueError, match="number of points"):
        kmeans(np.zeros((10, 2)), k)


def test_assign_matches_numpy_argmin():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(500, 6)).astype(np.float32)
    centroids = rng.normal(size=(7, 6)).astype(np.float32)
    got = assign(x, centroids)
    squared = ((x[:, None, :].astype(np.float64) - centroids[None].astype(np.float64)) ** 2).sum(-1)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, squared.argmin(axis=1))
    assert np.array_equal(assign(torch.from_numpy(x), centroids), got)
