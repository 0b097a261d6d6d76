"""Semantic positive pairs before any loss: mining, its filters and diagnostics, the batch order, the masks."""

import math

import pytest
import torch

from clusterclr.positives.semantic import (
    MinedPairs,
    mine_partners,
    mining_space,
    own_key_or_partners,
    pair_diagnostics,
    partner_mask,
    partner_order,
    same_image_or_partners,
)
from clusterclr.positives.views import own_key, same_image


def unit_vectors(degrees: list[float]) -> torch.Tensor:
    radians = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([radians.cos(), radians.sin()], dim=1)


# -- mining ----------------------------------------------------------------------------------


ANGLES = [0, 10, 90, 95, 180]  # cos: 0-10 0.985, 90-95 0.996, 180-95 0.087, 180-90 0.0


def test_mining_top1_on_hand_built_embeddings():
    pairs = mine_partners(unit_vectors(ANGLES).float(), neighbours=1)
    assert pairs.partners.tolist() == [[1], [0], [3], [2], [3]]
    expected = [math.cos(math.radians(d)) for d in (10, 10, 5, 5, 85)]
    assert pairs.similarities[:, 0].tolist() == pytest.approx(expected, abs=1e-6)


# Four points far from the origin along one line: raw cosines see their angles from the origin,
# centred ones which side of the mean they lie on (0 and 3 below it, 1 and 2 above).
LINE = torch.tensor([[5.0, 0.0], [5.0, 1.0], [5.0, 2.5], [5.0, -3.0]])  # at 0°, 11.3°, 26.6° and -31.0°


def test_centred_mining_sees_the_features_around_their_mean():
    assert mine_partners(LINE, 1).partners.flatten().tolist() == [1, 0, 1, 0]
    assert mine_partners(LINE, 1, space="centred").partners.flatten().tolist() == [3, 2, 1, 0]
    torch.manual_seed(0)
    x = torch.randn(30, 4) + 3
    centred = mine_partners(x, 3, space="centred")
    assert torch.equal(centred.partners, mine_partners(x - x.mean(0), 3).partners)


def test_whitened_features_have_identity_covariance_and_ignore_scales():
    torch.manual_seed(1)
    x = torch.randn(200, 5) @ torch.randn(5, 5) + 2
    white = mining_space(x, "whitened").double()
    torch.testing.assert_close(white.T @ white / len(white), torch.eye(5, dtype=torch.float64), atol=1e-4, rtol=0)
    # Whitening undoes any invertible linear map of the features, so the partners stay the same.
    mixed = x @ torch.tensor([[3.0, 1, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0.1, 0, 0], [0, 0, 0, 2, 1], [0, 0, 0, 0, 1]])
    assert torch.equal(mine_partners(x, 2, space="whitened").partners, mine_partners(mixed, 2, space="whitened").partners)
    # Fewer images than dimensions: directions without variance are dropped, not divided by zero.
    assert torch.isfinite(mining_space(torch.randn(3, 8), "whitened")).all()


def test_mutual_filter_keeps_only_pairs_mined_both_ways():
    # Raw top-1: 0 <-> 1 mutual; 2 -> 1 and 3 -> 0 are not returned.
    assert mine_partners(LINE, 1, mutual=True).partners.flatten().tolist() == [1, 0, -1, -1]
    # Top-2: 0: 1, 2; 1: 0, 2; 2: 1, 0; 3: 0, 1 -> every pair but those with 3, which no one mines back.
    mutual = mine_partners(LINE, 2, mutual=True)
    assert mutual.partners.tolist() == [[1, 2], [0, 2], [1, 0], [-1, -1]]
    assert torch.isnan(mutual.similarities[3]).all()


def test_quantile_filter_keeps_the_most_similar_pairs():
    # Raw top-1 similarities: cos 11.3° (rows 0, 1), cos 15.3° (row 2), cos 31.0° (row 3); the median is row 2's.
    assert mine_partners(LINE, 1, quantile=0.5).partners.flatten().tolist() == [1, 0, 1, -1]
    assert mine_partners(LINE, 1, quantile=0.0).partners.flatten().tolist() == [1, 0, 1, 0]
    kept = mine_partners(LINE, 1, quantile=0.5, mutual=True)
    assert kept.partners.flatten().tolist() == [1, 0, -1, -1]
    with pytest.raises(ValueError, match="quantile"):
        mine_partners(LINE, 1, quantile=1.0)


def test_mining_threshold_drops_weak_partners_and_pads():
    pairs = mine_partners(unit_vectors(ANGLES).float(), neighbours=2, threshold=0.5)
    # Second neighbours: 0 -> 2 (cos 90°=0), 1 -> 2 (80°), 2 -> 1 (80°), 3 -> 1 (85°), 4 -> 2 (90°); all below 0.5.
    assert pairs.partners.tolist() == [[1, -1], [0, -1], [3, -1], [2, -1], [-1, -1]]
    assert torch.isnan(pairs.similarities[pairs.partners < 0]).all()
    loose = mine_partners(unit_vectors(ANGLES).float(), neighbours=2, threshold=-0.05)
    assert loose.partners.tolist() == [[1, 2], [0, 2], [3, 1], [2, 1], [3, 2]]


@pytest.mark.parametrize("neighbours, threshold", [(1, None), (3, None), (3, 0.3)])
def test_mining_equals_a_float64_brute_force_search(neighbours, threshold):
    torch.manual_seed(neighbours)
    x = torch.randn(60, 5)
    unit = x.double() / x.double().norm(dim=1, keepdim=True)
    cosines = unit @ unit.T
    pairs = mine_partners(x, neighbours, threshold)
    for i in range(60):
        ranked = sorted((j for j in range(60) if j != i), key=lambda j: -float(cosines[i, j]))[:neighbours]
        kept = [j for j in ranked if threshold is None or cosines[i, j] >= threshold]
        assert pairs.partners[i].tolist() == kept + [-1] * (neighbours - len(kept))
        assert pairs.similarities[i, : len(kept)].tolist() == pytest.approx([float(cosines[i, j]) for j in kept], abs=1e-5)


def test_mining_is_cosine_so_row_scale_does_not_matter():
    x = unit_vectors(ANGLES).float()
    scaled = x * torch.tensor([[1.0], [7.0], [0.1], [3.0], [50.0]])
    assert torch.equal(mine_partners(scaled, 2).partners, mine_partners(x, 2).partners)


def test_duplicates_never_pair_an_image_with_itself():
    torch.manual_seed(0)
    x = torch.cat([torch.ones(4, 6), torch.randn(3, 6)])  # four identical rows tie with themselves
    partners = mine_partners(x, neighbours=2).partners
    rows = torch.arange(len(x))[:, None]
    assert not (partners == rows).any()
    for i in range(4):
        assert set(partners[i].tolist()) <= {0, 1, 2, 3} - {i} and len(set(partners[i].tolist())) == 2


def test_fewer_images_than_neighbours_pads_with_minus_one():
    pairs = mine_partners(torch.randn(3, 4), neighbours=4)
    assert pairs.partners.shape == (3, 4)
    for i, row in enumerate(pairs.partners.tolist()):
        assert sorted(row[:2]) == sorted({0, 1, 2} - {i}) and row[2:] == [-1, -1]


def test_mining_rejects_bad_input():
    with pytest.raises(ValueError, match="N >= 2"):
        mine_partners(torch.randn(1, 4), 1)
    with pytest.raises(ValueError, match="neighbours must be at least 1"):
        mine_partners(torch.randn(5, 4), 0)


def test_diagnostics_count_pairs_similarity_and_precision():
    pairs = MinedPairs(
        torch.tensor([[1, 2], [0, -1], [-1, -1], [0, 1]]),
        torch.tensor([[0.9, 0.5], [0.9, math.nan], [math.nan, math.nan], [0.6, 0.4]]),
    )
    labels = torch.tensor([0, 0, 1, 1])
    logs = pair_diagnostics(pairs, labels)
    # Pairs 0-1 (same), 0-2 (no), 1-0 (same), 3-0 (no), 3-1 (no).
    assert logs == {"pairs": 5, "images_with_partner": 3, "pair_similarity": pytest.approx(3.3 / 5), "pair_precision": 0.4}
    assert pair_diagnostics(pairs)["pair_precision"] is None
    empty = pair_diagnostics(MinedPairs(torch.full((3, 1), -1), torch.full((3, 1), math.nan)), labels[:3])
    assert empty == {"pairs": 0, "images_with_partner": 0, "pair_similarity": None, "pair_precision": None}


# -- batch order and masks ---------------------------------------------------------------------


def test_order_without_partners_is_the_plain_permutation():
    torch.manual_seed(3)
    expected = torch.randperm(50)
    torch.manual_seed(3)
    assert torch.equal(partner_order(torch.full((50, 2), -1)), expected)


def test_mutual_pairs_end_up_adjacent_and_every_image_appears_once():
    partners = torch.arange(40).reshape(20, 2).flip(1).reshape(40, 1)  # 0<->1, 2<->3, ...
    torch.manual_seed(0)
    order = partner_order(partners)
    assert sorted(order.tolist()) == list(range(40))
    assert all(order[t] // 2 == order[t + 1] // 2 for t in range(0, 40, 2))


def test_each_image_taken_from_the_walk_is_followed_by_a_partner_not_yet_placed():
    generator = torch.Generator().manual_seed(1)
    partners = torch.randint(0, 200, (200, 3), generator=generator)
    partners[partners == torch.arange(200)[:, None]] = -1
    partners[torch.rand(200, 3, generator=generator) < 0.3] = -1
    torch.manual_seed(2)
    order = partner_order(partners).tolist()
    assert sorted(order) == list(range(200))
    position = {image: t for t, image in enumerate(order)}
    t, followed = 0, 0
    while t < len(order):  # order[t] came from the walk; a partner placed after it must come right after it
        later = [p for p in partners[order[t]].tolist() if p >= 0 and position[p] > t]
        if later:
            assert order[t + 1] in later
            followed += 1
        t += 2 if later else 1
    assert followed > 50  # the property was exercised, not vacuously true
    torch.manual_seed(2)
    assert partner_order(partners).tolist() == order  # the global RNG decides it all


def test_partner_mask_is_symmetric_without_diagonal():
    partners = torch.tensor([[3, -1], [-1, -1], [5, 0], [-1, -1], [-1, -1], [-1, -1]])
    indices = torch.tensor([2, 0, 3, 1])  # 5 is not in the batch
    mask = partner_mask(indices, partners)
    expected = torch.zeros(4, 4, dtype=torch.bool)
    for a, b in [(0, 1), (1, 2)]:  # images 2-0 (mined by 2), 0-3 (mined by 0)
        expected[a, b] = expected[b, a] = True
    assert torch.equal(mask, expected)


def test_widened_masks_add_partners_to_the_instance_positives():
    partners_in_batch = torch.tensor([[False, True, False], [True, False, False], [False, False, False]])
    views = same_image_or_partners(partners_in_batch, num_views=2)
    assert torch.equal(views & ~same_image(3, 2), partners_in_batch.repeat(2, 2))
    assert not views.diagonal().any()
    keys = own_key_or_partners(partners_in_batch, num_candidates=7)
    assert keys.shape == (3, 7) and not keys[:, 3:].any()  # the queue holds negatives only
    assert torch.equal(keys[:, :3], torch.eye(3, dtype=torch.bool) | partners_in_batch)
    none = torch.zeros(3, 3, dtype=torch.bool)
    assert torch.equal(same_image_or_partners(none, 2), same_image(3, 2))
    assert torch.equal(own_key_or_partners(none, 7), own_key(3, 7))
