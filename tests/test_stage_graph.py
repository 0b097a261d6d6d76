"""The stage's neighbour graph, the choice of K, near-duplicate groups and atypical images."""

import numpy as np
import pytest
import torch

from clusterclr.errors import UserError
from clusterclr.stage import choose_k as choose_k_module
from clusterclr.stage.choose_k import choose_k, laplacian_spectrum
from clusterclr.stage.duplicates import (
    DuplicateGroup,
    atypical_rows,
    atypicality,
    duplicate_rows,
    most_atypical,
    near_duplicates,
)
from clusterclr.stage.graph import neighbour_graph, prepare


def planted_blobs(per_blob=30, blobs=10, dim=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(blobs, dim, generator=g)
    labels = torch.arange(blobs).repeat_interleave(per_blob)
    return centres[labels] + 0.2 * torch.randn(len(labels), dim, generator=g), labels


def test_graph_compares_centred_features():
    # Non-negative features all point one way; relative to their mean, two groups point apart.
    features = torch.tensor([[10.0, 1.0], [10.0, 1.1], [10.0, 3.0], [10.0, 3.1]])
    graph = neighbour_graph(features, 1)
    assert graph.indices[:, 0].tolist() == [1, 0, 3, 2]
    torch.testing.assert_close(prepare(features).norm(dim=1), torch.ones(4))
    assert prepare(features)[0] @ prepare(features)[2] < -0.9


# -- the number of clusters ------------------------------------------------------------------


@pytest.mark.parametrize("criterion", ["silhouette", "eigengap"])
@pytest.mark.parametrize("blobs, seed", [(10, 0), (7, 1)])
def test_choose_k_finds_the_planted_number_of_clusters(criterion, blobs, seed):
    features, _ = planted_blobs(blobs=blobs, seed=seed)
    choice = choose_k(features, 2, 15, criterion, seed=seed)
    assert choice.chosen == blobs
    assert list(choice.scores) == list(range(2, 16))
    assert choice.scores[blobs] == max(choice.scores.values())


def test_dense_and_sparse_spectra_agree(monkeypatch):
    features, _ = planted_blobs(per_blob=20, blobs=4, seed=3)
    features = features + 0.8 * torch.randn(features.shape, generator=torch.Generator().manual_seed(4))
    graph = neighbour_graph(features, 8)
    dense = laplacian_spectrum(graph, 6)
    monkeypatch.setattr(choose_k_module, "DENSE_SPECTRUM_UP_TO", 10)
    sparse = laplacian_spectrum(graph, 6)
    np.testing.assert_allclose(sparse, dense, atol=1e-8)
    assert dense[0] == pytest.approx(0, abs=1e-10) and (np.diff(dense) >= -1e-12).all()


def test_silhouette_samples_large_sets_reproducibly():
    features, _ = planted_blobs(blobs=4, seed=5)
    a = choose_k(features, 2, 6, seed=1, max_points=60)
    b = choose_k(features, 2, 6, seed=1, max_points=60)
    assert a == b and a.chosen == 4


@pytest.mark.parametrize(
    "features, k_min, k_max, message",
    [
        (torch.randn(20, 4), 5, 5, "range of at least two values"),
        (torch.randn(20, 4), 8, 3, "range of at least two values"),
        (torch.randn(20, 4), 2, 20, "cannot try 20 clusters on 20 images"),
        (torch.randn(20, 4), 1, 5, "at least 2"),
        (torch.empty(0, 4), 2, 5, "non-empty"),
        (torch.empty(20, 0), 2, 5, "non-empty"),
    ],
)
def test_choose_k_bad_input_is_a_user_error(features, k_min, k_max, message):
    with pytest.raises(UserError, match=message):
        choose_k(features, k_min, k_max)


def test_choose_k_rejects_an_unknown_criterion():
    with pytest.raises(UserError, match="silhouette, eigengap"):
        choose_k(torch.randn(20, 4), 2, 5, criterion="elbow")


# -- near-duplicates and atypical images -----------------------------------------------------


def with_planted_duplicates():
    """Blobs plus copies: 3 copies of image 0, one of image 45, each nudged by 1e-3; and one far-away image."""
    features, _ = planted_blobs(blobs=5, seed=6)
    g = torch.Generator().manual_seed(7)
    copies = features[[0, 0, 0, 45]] + 1e-3 * torch.randn(4, features.shape[1], generator=g)
    outlier = 10 * torch.randn(1, features.shape[1], generator=g)
    return torch.cat([features, copies, outlier])  # copies are rows 150..153, the outlier 154


def test_planted_near_duplicates_are_grouped_and_nothing_else():
    graph = neighbour_graph(with_planted_duplicates(), 5)
    groups = near_duplicates(graph, threshold=0.999)
    assert [g.images for g in groups] == [(0, 150, 151, 152), (45, 153)]
    assert all(g.similarity >= 0.999 for g in groups)
    assert near_duplicates(graph, threshold=1.01) == []


def test_duplicate_groups_larger_than_the_neighbour_count_are_joined_through_chains():
    features, _ = planted_blobs(blobs=3, seed=8)
    # Six copies of image 0 in a row, each 1e-4 further along one direction: a chain of 7 near-identical images.
    steps = torch.arange(1, 7, dtype=torch.float32)[:, None]
    copies = features[0] + 1e-4 * steps * torch.nn.functional.normalize(features[1] - features[0], dim=0)
    graph = neighbour_graph(torch.cat([features, copies]), 2)  # 2 neighbours each
    assert near_duplicates(graph, 0.999)[0].images == (0, 90, 91, 92, 93, 94, 95)


def test_most_atypical_image_is_the_planted_outlier():
    graph = neighbour_graph(with_planted_duplicates(), 5)
    ranked = most_atypical(graph, 3)
    assert ranked[0][0] == 154
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
    scores = atypicality(graph)
    assert scores[154] == pytest.approx(1 - graph.similarities[154].double().mean().item())
    assert len(most_atypical(graph)) == 155


def test_csv_rows_name_groups_and_ranks():
    groups = [DuplicateGroup((0, 3), 0.99), DuplicateGroup((1, 2), 0.97)]
    sources = ["a.png", "b.png", "c.png", "d.png"]
    assert duplicate_rows(groups, sources) == [
        {"group": 1, "size": 2, "image": 0, "source": "a.png", "similarity": 0.99},
        {"group": 1, "size": 2, "image": 3, "source": "d.png", "similarity": 0.99},
        {"group": 2, "size": 2, "image": 1, "source": "b.png", "similarity": 0.97},
        {"group": 2, "size": 2, "image": 2, "source": "c.png", "similarity": 0.97},
    ]
    assert atypical_rows([(2, 0.5), (0, 0.25)]) == [
        {"rank": 1, "image": 2, "source": "", "atypicality": 0.5},
        {"rank": 2, "image": 0, "source": "", "atypicality": 0.25},
    ]
