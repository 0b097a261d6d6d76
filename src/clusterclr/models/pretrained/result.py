"""What loading a weights file gives: the backbone, where its weights come from, and how to feed it."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from clusterclr.models.backbone_spec import BackboneSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# OpenAI's statistics of CLIP's training images; every CLIP tower expects them.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Preprocessing:
    """The input the weights were trained on: normalisation, resolution, and a ViT's patch size.

    Other resolutions work (a ViT resamples its position embedding), but the
    features are the ones the weights were made for at ``resolution``; a ViT's
    input sides are best multiples of ``patch_size``.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resolution: int = 224
    patch_size: int | None = None


def imagenet_input(resolution: int = 224, patch_size: int | None = None) -> Preprocessing:
    return Preprocessing(IMAGENET_MEAN, IMAGENET_STD, resolution, patch_size)


def clip_input(resolution: int, patch_size: int) -> Preprocessing:
    return Preprocessing(CLIP_MEAN, CLIP_STD, resolution, patch_size)


@dataclass(frozen=True)
class Pretrained:
    """A backbone with a file's weights loaded, its family (``dinov2``, ``open-clip``, …) and its input."""

    backbone: nn.Module
    family: str
    preprocessing: Preprocessing
    spec: BackboneSpec
    # How the weights were found inside the file: wrapper keys and prefixes taken off, e.g. ("teacher", "backbone.").
    unwrapped: tuple[str, ...] = ()
