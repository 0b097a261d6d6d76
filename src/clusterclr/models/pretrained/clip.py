"""CLIP image towers in OpenAI's layout: OpenAI's TorchScript ``.pt`` files and open_clip's checkpoints.

Names, under ``visual.``: ``conv1`` (no bias), ``class_embedding`` (a
vector), ``positional_embedding`` (no batch axis), ``ln_pre``,
``transformer.resblocks.N.{ln_1, attn.in_proj_weight/in_proj_bias,
attn.out_proj, ls_1.gamma, ln_2, mlp.c_fc, mlp.c_proj, ls_2.gamma}``,
``ln_post`` and ``proj``: a width × output matrix applied as ``x @ proj``,
or in some open_clip models a linear layer with a bias. Everything outside
``visual.`` is the text tower, left out. CLIP's ResNet towers
(``visual.layer1``, ``visual.attnpool``) are not ViTs and are refused.

OpenAI's models use QuickGELU; open_clip's use GELU, except its
``-quickgelu`` models, for which the activation must be given. Both use a
LayerNorm epsilon of 1e-5, CLIP's normalisation, and take their native
resolution from the position grid (224, or 336 for ViT-L/14@336px).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch

from clusterclr.errors import UserError
from clusterclr.models.pretrained.fitting import (
    Plan,
    Source,
    ViTOptions,
    block_count,
    need,
    take,
)
from clusterclr.models.pretrained.result import clip_input
from clusterclr.models.pretrained.vit_spec import Conventions, Parts, vit_spec

_BLOCK_PARTS = {
    "norm1.": "ln_1.",
    "norm2.": "ln_2.",
    "attn.qkv.weight": "attn.in_proj_weight",
    "attn.qkv.bias": "attn.in_proj_bias",
    "attn.proj.": "attn.out_proj.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
    "ls1.gamma": "ls_1.gamma",
    "ls2.gamma": "ls_2.gamma",
}
_TOWER_PARTS = {"patch_embed.": "conv1.", "ln_pre.": "ln_pre.", "norm.": "ln_post."}


def recognise(keys: Collection[str]) -> bool:
    return any(k.startswith("visual.") for k in keys)


def plan(tensors: Mapping[str, torch.Tensor], family: str, options: ViTOptions, origin: str) -> Plan:
    keys = set(tensors)
    if "visual.class_embedding" not in keys and "visual.layer1.0.conv1.weight" in keys:
        raise UserError(f"{origin} is a CLIP ResNet image tower; clusterclr loads CLIP's ViT towers only")
    patch_weight = need(tensors, "visual.conv1.weight", origin)
    positions = need(tensors, "visual.positional_embedding", origin).shape[0]
    linear_proj = "visual.proj.weight" in keys
    if linear_proj:
        output_dim = tensors["visual.proj.weight"].shape[0]
    else:
        output_dim = tensors["visual.proj"].shape[1] if "visual.proj" in keys else None
    block = "visual.transformer.resblocks.0."
    spec = vit_spec(
        patch_weight=patch_weight,
        depth=block_count(keys, r"visual\.transformer\.resblocks\.(\d+)\."),
        patch_positions=positions - 1,
        mlp_weight=need(tensors, f"{block}mlp.c_fc.weight", origin),
        parts=Parts(
            layer_scale=f"{block}ls_1.gamma" in keys,
            pre_norm="visual.ln_pre.weight" in keys,
            output_dim=output_dim,
            output_bias="visual.proj.bias" in keys,
            qkv_bias=f"{block}attn.in_proj_bias" in keys,
            patch_bias="visual.conv1.bias" in keys,
        ),
        conventions=Conventions(activation="quick_gelu" if family == "openai-clip" else "gelu", norm_eps=1e-5),
        options=options,
        origin=origin,
    )

    def source(name: str) -> Source:
        if name == "cls_token":
            return Source(("visual.class_embedding",), lambda t: t[0].reshape(1, 1, -1))
        if name == "pos_embed":
            return Source(("visual.positional_embedding",), lambda t: t[0].unsqueeze(0))
        if name == "proj.weight" and not linear_proj:
            return Source(("visual.proj",), lambda t: t[0].T)
        if name.startswith("proj."):
            return take(f"visual.{name}")
        for ours, theirs in _TOWER_PARTS.items():
            if name.startswith(ours):
                return take(f"visual.{theirs}{name.removeprefix(ours)}")
        _, index, part = name.split(".", 2)  # blocks.N.part
        for ours, theirs in _BLOCK_PARTS.items():
            if part.startswith(ours):
                return take(f"visual.transformer.resblocks.{index}.{theirs}{part.removeprefix(ours)}")
        raise KeyError(name)

    preprocessing = clip_input(spec.kwargs["image_size"], spec.kwargs["patch_size"])
    return Plan(spec, source, lambda key: not key.startswith("visual."), preprocessing)
