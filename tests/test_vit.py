import pytest
import torch
import torch.nn.functional as F

from clusterclr.models.backbone_spec import BackboneSpec
from clusterclr.models.vit import VIT_SIZES, VisionTransformer, build_vit, vit_name


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def tiny(**options):
    torch.manual_seed(0)
    defaults = {"dim": 32, "depth": 2, "heads": 4, "patch_size": 4, "image_size": 16}
    return VisionTransformer(**{**defaults, **options}).eval()


@pytest.mark.parametrize("name", list(VIT_SIZES))
@pytest.mark.parametrize("patch_size", [14, 16])
def test_standard_sizes(name, patch_size):
    dim, depth, heads = VIT_SIZES[name]
    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        net = build_vit(name, patch_size=patch_size)
    assert net.feature_dim == dim and len(net.blocks) == depth
    assert net.blocks[0].attn.heads == heads and dim // heads == 64
    assert net.patch_embed.weight.shape == (dim, 3, patch_size, patch_size)
    assert net.pos_embed.shape == (1, 1 + (224 // patch_size) ** 2, dim)
    assert vit_name(dim, depth, heads) == name


def test_feature_dimension_of_pooling_and_projection():
    x = torch.randn(2, 3, 16, 16)
    assert tiny()(x).shape == (2, 32)
    assert tiny(pooling="cls+mean").feature_dim == 64 and tiny(pooling="cls+mean")(x).shape == (2, 64)
    projected = tiny(output_dim=8, pooling="cls+mean")
    assert projected.feature_dim == 16 and projected(x).shape == (2, 16)


def test_cls_and_mean_pooling_reads_the_normalised_tokens_without_registers():
    net = tiny(registers=3, pooling="cls+mean")
    x = torch.randn(2, 3, 16, 16)
    tokens = net.tokens(x)
    assert tokens.shape == (2, 1 + 3 + 16, 32)
    expected = torch.cat([tokens[:, 0], tokens[:, 4:].mean(dim=1)], dim=1)
    torch.testing.assert_close(net(x), expected)


def test_any_input_size_resamples_positions():
    net = tiny()
    assert net(torch.randn(1, 3, 24, 20)).shape == (1, 32)
    assert torch.equal(net.patch_positions(4, 4), net.pos_embed[:, 1:])
    grid = net.pos_embed[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(6, 5), mode="bicubic", align_corners=False)
    torch.testing.assert_close(net.patch_positions(6, 5), expected.permute(0, 2, 3, 1).reshape(1, 30, 32))


def test_dinov2_offset_resampling_matches_the_original_formula():
    net = tiny(interpolate_offset=0.1)
    grid = net.pos_embed[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    # DINOv2's vision_transformer.py: scale_factor = (new + 0.1) / old, bicubic, no antialiasing.
    expected = F.interpolate(grid, scale_factor=(6.1 / 4, 3.1 / 4), mode="bicubic", antialias=False)
    torch.testing.assert_close(net.patch_positions(6, 3), expected.permute(0, 2, 3, 1).reshape(1, 18, 32))
    assert not torch.allclose(net.patch_positions(6, 3), tiny().patch_positions(6, 3))


def test_antialiased_resampling_as_timm_does():
    net = tiny(interpolate_antialias=True)
    grid = net.pos_embed[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(3, 2), mode="bicubic", antialias=True)
    torch.testing.assert_close(net.patch_positions(3, 2), expected.permute(0, 2, 3, 1).reshape(1, 6, 32))
    assert not torch.allclose(net.patch_positions(3, 2), tiny().patch_positions(3, 2))


def test_features_do_not_depend_on_the_batch():
    net = tiny(registers=2, layer_scale=0.1, pre_norm=True)
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(net(x)[1:2], net(x[1:2]), rtol=1e-5, atol=1e-6)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())


def test_quick_gelu_is_an_option():
    x = torch.randn(1, 3, 16, 16)
    assert not torch.allclose(tiny()(x), tiny(activation="quick_gelu")(x))


def test_trains():
    net = tiny(layer_scale=1e-5, registers=1, output_dim=8).train()
    net(torch.randn(2, 3, 16, 16)).pow(2).sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="unknown ViT"):
        build_vit("vit_huge")
    with pytest.raises(ValueError, match="fixes dim"):
        build_vit("vit_small", dim=32)
    with pytest.raises(ValueError, match="needs depth, heads"):
        build_vit("vit", dim=32)
    with pytest.raises(ValueError, match="unknown activation"):
        tiny(activation="relu")
    with pytest.raises(ValueError, match="unknown pooling"):
        tiny(pooling="mean")
    with pytest.raises(ValueError, match="does not split"):
        tiny(heads=5)


def test_spec_rebuilds_a_custom_vit():
    spec = BackboneSpec("vit", {"dim": 32, "depth": 1, "heads": 2, "patch_size": 8, "image_size": 16})
    net = spec.build()
    assert isinstance(net, VisionTransformer) and net.feature_dim == 32 and net.grid == 2
