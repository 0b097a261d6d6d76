"""ResNet backbones (He et al., 2016) that return pooled features.

Two stems: ``cifar`` (3×3 convolution, stride 1, no max-pool) keeps the
resolution of small images such as CIFAR's 32×32; ``imagenet`` (7×7 stride-2
convolution and a max-pool) is the original one, for 96 px and larger. A
width multiplier scales every stage, which is what lets a ResNet-18 train on
two CPU cores.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = _shortcut(in_channels, channels, stride)
        self.last_bn = self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = _shortcut(in_channels, out_channels, stride)
        self.last_bn = self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + self.shortcut(x))


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class ResNet(nn.Module):
    """A ResNet trunk; ``forward`` returns globally pooled features (N × feature_dim)."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        in_channels: int = 3,
        stem: str = "cifar",
        width: float = 1.0,
        zero_init_residual: bool = True,
    ) -> None:
        super().__init__()
        widths = [max(1, round(c * width)) for c in (64, 128, 256, 512)]
        if stem == "cifar":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                nn.BatchNorm2d(widths[0]),
                nn.ReLU(inplace=True),
            )
        elif stem == "imagenet":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False),
                nn.BatchNorm2d(widths[0]),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            )
        else:
            raise ValueError(f"unknown stem {stem!r}; expected 'cifar' or 'imagenet'")

        stages = []
        channels_in = widths[0]
        for stage, (channels, blocks) in enumerate(zip(widths, layers)):
            stride = 1 if stage == 0 else 2
            stage_blocks = []
            for b in range(blocks):
                stage_blocks.append(block(channels_in, channels, stride if b == 0 else 1))
                channels_in = channels * block.expansion
            stages.append(nn.Sequential(*stage_blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = channels_in

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            # Each block starts as the identity, which stabilises early training (Goyal et al., 2017).
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.stages(self.stem(x))), 1)


_RESNETS: dict[str, Callable[..., ResNet]] = {
    "resnet18": lambda **kw: ResNet(BasicBlock, (2, 2, 2, 2), **kw),
    "resnet34": lambda **kw: ResNet(BasicBlock, (3, 4, 6, 3), **kw),
    "resnet50": lambda **kw: ResNet(Bottleneck, (3, 4, 6, 3), **kw),
}

BACKBONES = tuple(_RESNETS)


def build_backbone(name: str, in_channels: int, stem: str, width: float) -> ResNet:
    if name not in _RESNETS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return _RESNETS[name](in_channels=in_channels, stem=stem, width=width)


def resolve_stem(stem: str, image_size: tuple[int, int]) -> str:
    """The ResNet stem: as configured, or for "auto" the CIFAR stem up to 64 px and ImageNet's above."""
    return stem if stem != "auto" else ("cifar" if min(image_size) <= 64 else "imagenet")
