import pytest
import torch
from pydantic import ValidationError

from clusterclr.augment import ViewMaker, channel_stats, recipe_for
from clusterclr.config import AugmentConfig


def make(size: int, channels: int) -> ViewMaker:
    return ViewMaker(recipe_for(AugmentConfig(), size), (size, size), channels, (0.5,) * channels, (0.25,) * channels)


@pytest.mark.parametrize("size, channels", [(8, 1), (32, 3), (96, 3)])
def test_views_keep_shape_and_range_and_differ(size, channels):
    torch.manual_seed(0)
    images = torch.randint(0, 256, (6, channels, size, size), dtype=torch.uint8)
    maker = make(size, channels)
    views = maker(images, num_views=3)
    assert len(views) == 3
    low, high = (0 - 0.5) / 0.25, (1 - 0.5) / 0.25
    for v in views:
        assert v.shape == images.shape and v.dtype == torch.float32
        assert v.min() >= low - 1e-5 and v.max() <= high + 1e-5
    assert not torch.allclose(views[0], views[1])


def test_every_sample_draws_its_own_parameters():
    torch.manual_seed(1)
    one = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    view = make(32, 3)(one.repeat(8, 1, 1, 1), num_views=1)[0]
    # Identical inputs: any two equal outputs would mean shared crop/jitter parameters.
    for i in range(8):
        for j in range(i + 1, 8):
            assert not torch.allclose(view[i], view[j])


def test_clean_view_is_exactly_the_normalised_image():
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    clean = make(32, 3).clean(images)
    assert torch.allclose(clean, (images.float() / 255 - 0.5) / 0.25)


def test_a_channels_last_maker_gives_every_view_in_that_layout_with_the_same_values():
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    plain = make(32, 3)
    last = ViewMaker(plain.recipe, (32, 32), 3, (0.5,) * 3, (0.25,) * 3, channels_last=True)
    views = {}
    for name, maker in (("plain", plain), ("last", last)):
        torch.manual_seed(2)
        views[name] = [maker.clean(images), *maker(images, num_views=2), maker.finish(images)]
    for a, b in zip(views["plain"], views["last"]):
        assert a.is_contiguous() and b.is_contiguous(memory_format=torch.channels_last)
        assert not b.is_contiguous()
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    (batch, _), = last.clean_batches(images, 8, torch.device("cpu"))
    assert batch.is_contiguous(memory_format=torch.channels_last)


def test_presets_follow_resolution_and_overrides_apply():
    assert recipe_for(AugmentConfig(), 8) == recipe_for(AugmentConfig(preset="small"), 8)
    assert recipe_for(AugmentConfig(), 32).blur_prob == 0
    assert recipe_for(AugmentConfig(), 96).blur_prob > 0
    assert recipe_for(AugmentConfig(flip_prob=0.0), 32).flip_prob == 0.0
    assert all(value is not None for value in recipe_for(AugmentConfig(), 32).model_dump().values())
    with pytest.raises(ValidationError, match="preset"):
        AugmentConfig(preset="huge")


def test_views_reject_float_input():
    with pytest.raises(TypeError, match="uint8"):
        make(32, 3)(torch.rand(2, 3, 32, 32))


def test_channel_stats_match_numpy():
    images = torch.randint(0, 256, (20, 3, 5, 5), dtype=torch.uint8)
    mean, std = channel_stats(images)
    x = images.double() / 255
    assert mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist())
    assert std == pytest.approx(x.std(dim=(0, 2, 3)).tolist())


def test_shift_hue_is_kornias_hue_adjustment():
    import math

    from kornia.enhance import adjust_hue

    from clusterclr.augment import shift_hue

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(64, 3, 9, 9, generator=generator)
    images[:8] = images[:8, :1]  # grey pixels: no hue to turn
    images[8:16, 1] = images[8:16, 0]  # ties for the largest channel
    radians = (torch.rand(64, generator=generator) * 2 - 1) * math.pi
    torch.testing.assert_close(shift_hue(images, radians), adjust_hue(images, radians), rtol=0, atol=2e-5)
    assert not torch.allclose(shift_hue(images[16:], radians[16:]), images[16:], atol=1e-2)


@pytest.mark.parametrize("size, scale", [(32, (0.2, 1.0)), (12, (0.001, 0.01)), (96, (0.08, 1.0))])
def test_batched_crop_gives_kornias_pixels(size, scale):
    """The batched resize reproduces kornia's per-image slice-mode crop from the same parameters, one-pixel boxes included."""
    import kornia.augmentation as K

    from clusterclr.augment import BatchedResizedCrop, resized_crop

    torch.manual_seed(0)
    images = torch.rand(64, 3, size + 5, size + 3)
    kornias = K.RandomResizedCrop((size, size), scale=scale, ratio=(0.5, 2.0))
    params = kornias.forward_parameters(images.shape)
    expected = kornias(images, params=params)
    torch.testing.assert_close(resized_crop(images, params["src"], (size, size)), expected, rtol=0, atol=1e-6)
    ours = BatchedResizedCrop((size, size), scale=scale, ratio=(0.5, 2.0))
    torch.testing.assert_close(ours(images, params=params), expected, rtol=0, atol=1e-6)
