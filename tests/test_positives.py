import torch

from clusterclr.positives.views import same_image


def test_same_image_pairs_exactly_the_views_of_one_image():
    mask = same_image(num_images=3, num_views=2)
    expected = torch.zeros(6, 6, dtype=torch.bool)
    for i in range(3):
        expected[i, i + 3] = expected[i + 3, i] = True
    assert torch.equal(mask, expected)


def test_same_image_is_symmetric_with_empty_diagonal():
    mask = same_image(num_images=5, num_views=4)
    assert torch.equal(mask, mask.T)
    assert not mask.diagonal().any()
    assert (mask.sum(1) == 3).all()
