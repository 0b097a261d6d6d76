"""DINOv2 weights in Hugging Face transformers' layout (``Dinov2Model``, ``Dinov2WithRegistersModel``).

Names: ``embeddings.{cls_token, position_embeddings, register_tokens,
mask_token, patch_embeddings.projection}``, ``encoder.layer.N.{norm1,
attention.attention.query/key/value, attention.output.dense,
layer_scale1.lambda1, norm2, mlp.fc1, mlp.fc2, layer_scale2.lambda1}`` and
``layernorm``. transformers 5 names the attention ``attention.q_proj/k_proj/
v_proj/o_proj`` in memory (its files keep the old names); both are read. The
separate query, key and value projections stack into the fused one.

transformers resamples positions to the new grid's size, with antialiasing
for the register models; it uses GELU and a LayerNorm epsilon of 1e-6.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch

from clusterclr.models.pretrained.fitting import (
    Plan,
    Source,
    ViTOptions,
    block_count,
    concatenate,
    need,
    take,
)
from clusterclr.models.pretrained.result import imagenet_input
from clusterclr.models.pretrained.vit_spec import Conventions, Parts, vit_spec

_SAME_IN_BLOCK = ("norm1.", "norm2.", "mlp.")
_EMBEDDINGS = {
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "registers": "embeddings.register_tokens",
}


def recognise(keys: Collection[str]) -> bool:
    return "embeddings.cls_token" in keys and any(k.endswith(".layer_scale1.lambda1") for k in keys)


def plan(tensors: Mapping[str, torch.Tensor], family: str, options: ViTOptions, origin: str) -> Plan:
    keys = set(tensors)
    registers = tensors["embeddings.register_tokens"].shape[1] if "embeddings.register_tokens" in keys else 0
    patch_weight = need(tensors, "embeddings.patch_embeddings.projection.weight", origin)
    if "encoder.layer.0.attention.q_proj.weight" in keys:
        query, key, value, output = (f"attention.{p}_proj" for p in "qkvo")
    else:
        query, key, value = (f"attention.attention.{p}" for p in ("query", "key", "value"))
        output = "attention.output.dense"
    spec = vit_spec(
        patch_weight=patch_weight,
        depth=block_count(keys, r"encoder\.layer\.(\d+)\."),
        patch_positions=need(tensors, "embeddings.position_embeddings", origin).shape[1] - 1,
        mlp_weight=need(tensors, "encoder.layer.0.mlp.fc1.weight", origin),
        parts=Parts(
            layer_scale=True,
            registers=registers,
            qkv_bias=f"encoder.layer.0.{query}.bias" in keys,
            patch_bias="embeddings.patch_embeddings.projection.bias" in keys,
        ),
        conventions=Conventions(interpolate_antialias=bool(registers)),
        options=options,
        origin=origin,
    )

    def source(name: str) -> Source:
        if name in _EMBEDDINGS:
            return take(_EMBEDDINGS[name])
        if name.startswith("patch_embed."):
            return take(name.replace("patch_embed.", "embeddings.patch_embeddings.projection.", 1))
        if name.startswith("norm."):
            return take(name.replace("norm.", "layernorm.", 1))
        _, index, part = name.split(".", 2)  # blocks.N.part
        layer = f"encoder.layer.{index}."
        if part.startswith("attn.qkv."):
            tensor = part.removeprefix("attn.qkv.")
            return Source(tuple(f"{layer}{p}.{tensor}" for p in (query, key, value)), concatenate)
        if part.startswith("attn.proj."):
            return take(f"{layer}{output}.{part.removeprefix('attn.proj.')}")
        if part in ("ls1.gamma", "ls2.gamma"):
            return take(f"{layer}layer_scale{part[2]}.lambda1")
        if part.startswith(_SAME_IN_BLOCK):
            return take(layer + part)
        raise KeyError(name)

    preprocessing = imagenet_input(224, spec.kwargs["patch_size"])
    return Plan(spec, source, lambda key: key == "embeddings.mask_token", preprocessing)
