"""Pretrained backbones from local weight files.

``load_pretrained(path)`` reads a weights file without running anything in
it, recognises its family from the tensors' names (or takes the one named),
tells the architecture from the tensors, builds the matching clusterclr
backbone and loads every tensor strictly. Families:

* ResNet-18/34/50: ``torchvision-resnet`` (and ``timm-resnet``, the same
  names), ``hf-resnet`` (transformers' ``ResNetModel``);
* ViT: ``timm-vit`` (timm, DeiT, DINO), ``dinov2`` (the official releases,
  with or without registers), ``hf-dinov2`` (transformers' ``Dinov2Model``
  and ``Dinov2WithRegistersModel``);
* CLIP's image tower: ``openai-clip`` (OpenAI's TorchScript ``.pt``),
  ``open-clip``, ``hf-clip`` (transformers' ``CLIPVisionModel`` and kin).

Files are ``.safetensors``, ``torch.save`` pickles (``.pth``, ``.pt``,
``.bin``) or TorchScript archives, the weights possibly wrapped by training
code (``module.``, ``backbone.``, ``encoder_q.``, Lightning's
``state_dict``, DINO's ``teacher``). Nothing is downloaded.
"""

from clusterclr.models.pretrained.load import (
    FAMILIES,
    load_pretrained,
    recognise_family,
)
from clusterclr.models.pretrained.result import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    Pretrained,
)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "FAMILIES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Preprocessing",
    "Pretrained",
    "load_pretrained",
    "recognise_family",
]
