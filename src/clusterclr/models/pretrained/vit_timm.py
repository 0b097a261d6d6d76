"""ViT weights in timm's layout: timm's and DINO's ViTs, and the official DINOv2 releases.

All name ``cls_token``, ``pos_embed``, ``patch_embed.proj`` and
``blocks.N.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2,
ls2.gamma}``, ``norm``: clusterclr's ViT uses the same names. Besides, timm
has ``norm_pre`` (its ports of CLIP), ``reg_token`` and a classifier
``head`` (left out); DINOv2 has ``register_tokens`` and a ``mask_token``
used only in training (left out). DINOv2 checkpoints saved in chunks for
sharded training name ``blocks.C.N`` (C the chunk); N is the block.

Where the class token and the registers get their positions differs:

* DINOv2, and timm by default: ``pos_embed`` holds the class token's
  position, then the patches'; registers get none.
* timm's ``no_embed_class`` models (DeiT III, its DINOv2-with-registers
  ports): ``pos_embed`` holds the patches' only, the class token's already
  added into it; its position here is zero.
* timm with registers but not ``no_embed_class``: positions for the class
  token, the registers, then the patches. A register's position never
  changes, so it is added into the register.

The families differ in convention. The official DINOv2 code resamples
positions with a scale-factor offset of 0.1, or with antialiasing for the
register models; timm antialiases. timm's CLIP ports (``norm_pre``) use a
LayerNorm epsilon of 1e-5 and CLIP's normalisation, its other ViTs 1e-6 and
ImageNet's. DINOv2 works at 224 px though its positions are laid out for 518.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping

import torch

from clusterclr.errors import UserError
from clusterclr.models.pretrained.fitting import Plan, Source, ViTOptions, need, take
from clusterclr.models.pretrained.result import clip_input, imagenet_input
from clusterclr.models.pretrained.vit_spec import Conventions, Parts, vit_spec

_BLOCK = re.compile(r"blocks\.(\d+)\.")
_CHUNKED_BLOCK = re.compile(r"(blocks\.\d+\.(\d+)\.)")


def recognise(keys: Collection[str]) -> bool:
    return "cls_token" in keys and any(k.startswith("blocks.") and k.endswith(".attn.qkv.weight") for k in keys)


def is_dinov2(keys: Collection[str]) -> bool:
    """Only the official DINOv2 files keep the training mask token or name ``register_tokens``."""
    return "mask_token" in keys or "register_tokens" in keys


def plan(tensors: Mapping[str, torch.Tensor], family: str, options: ViTOptions, origin: str) -> Plan:
    keys = set(tensors)
    block_prefix = _block_prefixes(keys)
    register_key = next((k for k in ("register_tokens", "reg_token") if k in keys), None)
    registers = tensors[register_key].shape[1] if register_key else 0
    positions = need(tensors, "pos_embed", origin).shape[1]
    patch_positions, pos_source, register_source = _positions(positions, registers, register_key, origin)
    pre_norm = "norm_pre.weight" in keys
    patch_weight = need(tensors, "patch_embed.proj.weight", origin)
    if family == "dinov2":
        conventions = Conventions(interpolate_offset=0.0 if registers else 0.1, interpolate_antialias=bool(registers))
    else:
        conventions = Conventions(norm_eps=1e-5 if pre_norm else 1e-6, interpolate_antialias=True)
    first = block_prefix.get(0, "blocks.0.")
    spec = vit_spec(
        patch_weight=patch_weight,
        depth=max(block_prefix) + 1 if block_prefix else 0,
        patch_positions=patch_positions,
        mlp_weight=need(tensors, f"{first}mlp.fc1.weight", origin),
        parts=Parts(
            layer_scale=f"{first}ls1.gamma" in keys,
            registers=registers,
            pre_norm=pre_norm,
            qkv_bias=f"{first}attn.qkv.bias" in keys,
            patch_bias="patch_embed.proj.bias" in keys,
        ),
        conventions=conventions,
        options=options,
        origin=origin,
    )

    patch_size = spec.kwargs["patch_size"]
    if family == "dinov2":
        preprocessing = imagenet_input(224, patch_size)
    else:
        preprocessing = (clip_input if pre_norm else imagenet_input)(spec.kwargs["image_size"], patch_size)

    def source(name: str) -> Source:
        if name == "pos_embed":
            return pos_source
        if name == "registers" and register_source is not None:
            return register_source
        if name.startswith("patch_embed."):
            return take(name.replace("patch_embed.", "patch_embed.proj.", 1))
        if name.startswith("ln_pre."):
            return take(name.replace("ln_pre.", "norm_pre.", 1))
        block = _BLOCK.match(name)
        if block:
            index = int(block.group(1))
            return take(block_prefix.get(index, f"blocks.{index}.") + name[block.end() :])
        return take(name)

    return Plan(spec, source, lambda key: key == "mask_token" or key.startswith("head."), preprocessing)


def _block_prefixes(keys: set[str]) -> dict[int, str]:
    """Each block's name prefix in the file, by block index: ``blocks.N.``, or ``blocks.C.N.`` when chunked."""
    if "blocks.0.0.norm1.weight" not in keys:
        return {int(m.group(1)): f"blocks.{m.group(1)}." for m in map(_BLOCK.match, keys) if m}
    return {int(m.group(2)): m.group(1) for m in map(_CHUNKED_BLOCK.match, keys) if m}


def _positions(
    positions: int, registers: int, register_key: str | None, origin: str
) -> tuple[int, Source, Source | None]:
    """The patch-position count, and where the backbone's positions and registers come from."""
    registers_as_they_are = Source((register_key,)) if register_key else None
    if _is_square(positions - 1):  # class token, then patches
        return positions - 1, take("pos_embed"), registers_as_they_are
    if _is_square(positions):  # patches only: the class token carries its own position
        return positions, Source(("pos_embed",), _class_position_zero), registers_as_they_are
    if register_key and _is_square(positions - 1 - registers):  # class token, registers, then patches
        return (
            positions - 1 - registers,
            Source(("pos_embed",), lambda t: torch.cat([t[0][:, :1], t[0][:, 1 + registers :]], dim=1)),
            Source((register_key, "pos_embed"), lambda t: t[0] + t[1][:, 1 : 1 + registers]),
        )
    raise UserError(f"{origin} has {positions} positions, which fit no square grid of patches")


def _is_square(n: int) -> bool:
    return n >= 0 and math.isqrt(n) ** 2 == n


def _class_position_zero(tensors: list[torch.Tensor]) -> torch.Tensor:
    (patches,) = tensors
    return torch.cat([torch.zeros_like(patches[:, :1]), patches], dim=1)
