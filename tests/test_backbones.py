import pytest
import torch

from clusterclr.models.backbones import build_backbone
from clusterclr.models.heads import MLPHead


@pytest.mark.parametrize(
    "name, stem, size, width, dim",
    [("resnet18", "cifar", 32, 0.25, 128), ("resnet34", "cifar", 8, 0.125, 64), ("resnet50", "imagenet", 64, 0.125, 256)],
)
def test_feature_dimension_and_shape(name, stem, size, width, dim):
    net = build_backbone(name, in_channels=3, stem=stem, width=width)
    assert net.feature_dim == dim
    assert net(torch.randn(2, 3, size, size)).shape == (2, dim)


def test_grayscale_input_and_stems_differ_in_resolution():
    cifar = build_backbone("resnet18", 1, "cifar", 0.25)
    imagenet = build_backbone("resnet18", 1, "imagenet", 0.25)
    x = torch.randn(2, 1, 32, 32)
    assert cifar.stem(x).shape[-1] == 32
    assert imagenet.stem(x).shape[-1] == 8


def test_residual_blocks_start_as_identity():
    net = build_backbone("resnet18", 3, "cifar", 0.25)
    assert all(float(b.last_bn.weight.detach().abs().sum()) == 0 for stage in net.stages for b in stage)


def test_unknown_backbone_is_rejected():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg", 3, "cifar", 1.0)


def test_projection_head_layers():
    head = MLPHead(16, 32, 8, num_layers=3, last_bn=True)
    assert head(torch.randn(4, 16)).shape == (4, 8)
    assert sum(isinstance(m, torch.nn.Linear) for m in head) == 3
