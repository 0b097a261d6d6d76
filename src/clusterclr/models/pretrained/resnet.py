"""ResNet weights: torchvision's layout (which timm's ResNets share) and Hugging Face transformers'.

All of them are torchvision's ResNet ("v1.5"): a 7×7 stride-2 convolution
and a 3×3 stride-2 max-pool as the stem, stages of stride 1, 2, 2, 2 whose
first block strides on its 3×3 convolution, and a 1×1 convolution with batch
norm as the shortcut wherever the shape changes. That is clusterclr's
``ResNet`` with the ``imagenet`` stem, to the tensor. The depth, the block
type and the width come from the file.

torchvision names ``conv1``, ``bn1``, ``layerS.B.convK``/``bnK``,
``layerS.0.downsample.0``/``.1`` and a classifier ``fc`` (left out);
transformers names ``embedder.embedder.convolution``/``normalization``,
``encoder.stages.S.layers.B.layer.K`` and ``….shortcut``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch

from clusterclr.errors import UserError
from clusterclr.models.backbone_spec import BackboneSpec
from clusterclr.models.pretrained.fitting import (
    Plan,
    Source,
    ViTOptions,
    block_count,
    need,
)
from clusterclr.models.pretrained.result import imagenet_input

# (bottleneck blocks?, blocks per stage) of the ResNets clusterclr builds.
_DEPTHS = {
    (False, (2, 2, 2, 2)): "resnet18",
    (False, (3, 4, 6, 3)): "resnet34",
    (True, (3, 4, 6, 3)): "resnet50",
}


def recognise_torchvision(keys: Collection[str]) -> bool:
    return "layer1.0.conv1.weight" in keys


def recognise_hf(keys: Collection[str]) -> bool:
    return "embedder.embedder.convolution.weight" in keys


def plan_torchvision(tensors: Mapping[str, torch.Tensor], family: str, options: ViTOptions, origin: str) -> Plan:
    stem = need(tensors, "conv1.weight", origin)
    blocks = tuple(block_count(tensors, rf"layer{stage}\.(\d+)\.") for stage in (1, 2, 3, 4))
    spec = _spec(stem, "layer1.0.conv3.weight" in tensors, blocks, origin)

    def source(name: str) -> Source:
        if name.startswith("stem."):
            layer, tensor = name.removeprefix("stem.").split(".", 1)
            key = f"{'conv1' if layer == '0' else 'bn1'}.{tensor}"
        else:
            _, stage, block, tensor = name.split(".", 3)  # stages.S.B.tensor
            key = f"layer{int(stage) + 1}.{block}.{tensor.replace('shortcut.', 'downsample.')}"
        return _optional_counter(key)

    return Plan(spec, source, lambda key: key.startswith("fc."), imagenet_input())


def plan_hf(tensors: Mapping[str, torch.Tensor], family: str, options: ViTOptions, origin: str) -> Plan:
    stem = need(tensors, "embedder.embedder.convolution.weight", origin)
    blocks = tuple(block_count(tensors, rf"encoder\.stages\.{stage}\.layers\.(\d+)\.") for stage in range(4))
    spec = _spec(stem, "encoder.stages.0.layers.0.layer.2.convolution.weight" in tensors, blocks, origin)

    def source(name: str) -> Source:
        if name.startswith("stem."):
            layer, tensor = name.removeprefix("stem.").split(".", 1)
            return _optional_counter(f"embedder.embedder.{_hf_part(layer == '0')}.{tensor}")
        _, stage, block, tensor = name.split(".", 3)  # stages.S.B.tensor
        module, tensor = tensor.split(".", 1)
        if module == "shortcut":
            layer, tensor = tensor.split(".", 1)
            part = f"shortcut.{_hf_part(layer == '0')}"
        else:  # convK / bnK: the K-th convolution layer, counted from 0
            part = f"layer.{int(module[-1]) - 1}.{_hf_part(module.startswith('conv'))}"
        return _optional_counter(f"encoder.stages.{stage}.layers.{block}.{part}.{tensor}")

    return Plan(spec, source, lambda key: False, imagenet_input())


def _spec(stem: torch.Tensor, bottleneck: bool, blocks: tuple[int, ...], origin: str) -> BackboneSpec:
    name = _DEPTHS.get((bottleneck, blocks))
    if name is None:
        kind = "bottleneck" if bottleneck else "basic"
        raise UserError(
            f"{origin} holds a ResNet of {'-'.join(map(str, blocks))} {kind} blocks; "
            f"clusterclr builds {', '.join(_DEPTHS.values())}"
        )
    # Every stage's width is a multiple of the stem's 64 channels, so the stem tells the width multiplier.
    return BackboneSpec(name, {"in_channels": stem.shape[1], "stem": "imagenet", "width": stem.shape[0] / 64})


def _hf_part(convolution: bool) -> str:
    return "convolution" if convolution else "normalization"


def _optional_counter(key: str) -> Source:
    return Source((key,), optional=key.endswith("num_batches_tracked"))
