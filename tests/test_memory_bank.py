"""The pseudo-labelled memory bank: online relabelling, centroid refresh, dissolve and split, on hand-built data."""

import math

import pytest
import torch
import torch.nn.functional as F

from clusterclr.clustering.metrics import nmi
from clusterclr.clustering.online import split_into_empty_clusters
from clusterclr.memory.bank import MemoryBank


def at_angles(*degrees: float) -> torch.Tensor:
    """Unit vectors in the plane at the given angles."""
    radians = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([radians.cos(), radians.sin()], 1).float()


def bank_with(features: torch.Tensor, labels: list[int], centroids: torch.Tensor, **kwargs) -> MemoryBank:
    bank = MemoryBank(len(features), features.shape[1], len(centroids), **kwargs)
    bank.features.copy_(features)
    bank.labels.copy_(torch.tensor(labels))
    bank.centroids.copy_(centroids)
    return bank


def normalised_mean(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.double().sum(0), dim=0).float()


def test_write_overwrites_the_rows_and_relabels_them_to_the_nearest_centroid():
    features = at_angles(0, 10, 20, 80, 90, 100)
    bank = bank_with(features, [0, 0, 0, 1, 1, 1], at_angles(0, 90), refresh_every=100, min_cluster_size=0)
    keys = torch.tensor([[0.2, 3.0], [5.0, 1.0]])  # unnormalised: near 86° and 11°
    bank.write(torch.tensor([0, 4]), keys)
    assert torch.allclose(bank.features[0], F.normalize(keys[0], dim=0))
    assert torch.allclose(bank.features[4], F.normalize(keys[1], dim=0))
    assert bank.labels.tolist() == [1, 0, 0, 1, 0, 1]  # rows 0 and 4 swapped clusters
    assert torch.equal(bank.features[[1, 2, 3, 5]], features[[1, 2, 3, 5]])  # other rows untouched
    assert torch.equal(bank.centroids, at_angles(0, 90))  # no refresh yet


def test_centroids_are_recomputed_every_refresh_every_writes():
    features = at_angles(0, 10, 20, 80, 90, 100)
    bank = bank_with(features, [0, 0, 0, 1, 1, 1], at_angles(45, 135), refresh_every=3, min_cluster_size=0)
    for step in range(2):
        bank.write(torch.tensor([5]), at_angles(100))
        assert torch.equal(bank.centroids, at_angles(45, 135)), f"refreshed early, at write {step + 1}"
    bank.write(torch.tensor([5]), at_angles(100))
    # Every centroid is now its members' normalised mean: 10° and 90°, not 45° and 135°.
    assert bank.labels.tolist() == [0, 0, 0, 1, 1, 1]
    expected = torch.stack([normalised_mean(features[:3]), normalised_mean(features[3:])])
    assert torch.allclose(bank.centroids, expected, atol=1e-6)
    assert int(bank.writes) == 3


def test_small_clusters_dissolve_into_their_nearest_centroid_and_empty_ones_take_half_the_largest():
    # Cluster 0: two tight groups (near 0° and near 90°); cluster 1 near 180°; cluster 2 a lone point at 170°.
    features = at_angles(0, 2, 4, 88, 90, 92, 178, 182, 170)
    bank = bank_with(features, [0, 0, 0, 0, 0, 0, 1, 1, 2], at_angles(45, 180, 170), min_cluster_size=2)
    bank.refresh()
    labels = bank.labels.tolist()
    # The lone point joined the cluster at 180° (not 45°, the other survivor) ...
    assert labels[6] == labels[7] == labels[8] == 1
    # ... and its emptied cluster took one of the two groups of the largest cluster, split along the gap.
    assert labels[0] == labels[1] == labels[2] != labels[3] == labels[4] == labels[5]
    assert sorted({labels[0], labels[3]}) == [0, 2]
    expected = torch.stack([normalised_mean(features[[i for i in range(9) if labels[i] == k]]) for k in range(3)])
    assert torch.allclose(bank.centroids, expected, atol=1e-6)


def test_every_cluster_is_refilled_even_when_all_are_small():
    bank = bank_with(at_angles(0, 60, 120, 180, 240), [0, 1, 2, 3, 4], at_angles(0, 60, 120, 180, 240), min_cluster_size=10)
    bank.refresh()
    assert sorted(torch.bincount(bank.labels, minlength=5).tolist()) == [1, 1, 1, 1, 1]


def test_splitting_identical_features_halves_the_cluster():
    labels = split_into_empty_clusters(at_angles(30, 30, 30, 30), torch.zeros(4, dtype=torch.long), num_clusters=2)
    assert torch.bincount(labels, minlength=2).tolist() == [2, 2]


def test_splitting_needs_as_many_features_as_clusters():
    with pytest.raises(ValueError, match="3 clusters cannot all be filled from 2 features"):
        split_into_empty_clusters(at_angles(0, 90), torch.zeros(2, dtype=torch.long), num_clusters=3)


def test_initialise_clusters_the_features_and_leaves_no_cluster_empty():
    torch.manual_seed(0)
    centres = F.normalize(torch.randn(3, 8), dim=1)
    groups = torch.arange(30) % 3
    features = centres[groups] * 5 + 0.05 * torch.randn(30, 8)  # unnormalised on purpose
    bank = MemoryBank(30, 8, clusters=3, min_cluster_size=2)
    bank.initialise(features, seed=0)
    assert nmi(groups.numpy(), bank.labels.numpy()) == 1.0
    assert torch.allclose(bank.features, F.normalize(features, dim=1))
    assert torch.allclose(bank.centroids.norm(dim=1), torch.ones(3))
    assert int(bank.writes) == 0


def test_a_bank_loaded_from_a_checkpoint_refreshes_at_the_same_step():
    features = at_angles(0, 10, 20, 80, 90, 100)
    original = bank_with(features, [0, 0, 0, 1, 1, 1], at_angles(45, 135), refresh_every=3, min_cluster_size=0)
    for _ in range(2):
        original.write(torch.tensor([5]), at_angles(100))
    resumed = MemoryBank(6, 2, 2, refresh_every=3, min_cluster_size=0)
    resumed.load_state_dict(original.state_dict())
    for bank in (original, resumed):
        bank.write(torch.tensor([5]), at_angles(100))
    assert not torch.equal(resumed.centroids, at_angles(45, 135))  # the third write refreshed
    assert torch.equal(resumed.centroids, original.centroids)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_low_precision_bank_relabels_like_a_float32_one(dtype):
    features = at_angles(0, 10, 20, 80, 90, 100)
    banks = [
        bank_with(features, [0, 0, 0, 1, 1, 1], at_angles(0, 90), dtype=d, refresh_every=2, min_cluster_size=0)
        for d in (torch.float32, dtype)
    ]
    for bank in banks:
        bank.write(torch.tensor([0, 4]), torch.tensor([[0.2, 3.0], [5.0, 1.0]]))
        bank.write(torch.tensor([1]), at_angles(60))
    assert banks[1].features.dtype == dtype
    assert torch.equal(banks[0].labels, banks[1].labels)
    assert torch.allclose(banks[0].centroids, banks[1].centroids, atol=1e-2)


def test_more_clusters_than_images_is_refused():
    with pytest.raises(ValueError, match="clusters must be between 1 and the 4 images"):
        MemoryBank(4, 2, clusters=5)
