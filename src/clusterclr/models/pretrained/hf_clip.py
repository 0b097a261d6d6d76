"""CLIP image towers in Hugging Face transformers' layout (``CLIPModel``, ``CLIPVisionModel``, ``…WithProjection``).

Names: ``embeddings.{class_embedding, patch_embedding,
position_embedding}`` (the position table as an embedding layer's weight),
``pre_layrnorm`` (sic), ``encoder.layers.N.{layer_norm1,
self_attn.q_proj/k_proj/v_proj/out_proj, layer_norm2, mlp.fc1, mlp.fc2}``,
``post_layernorm``; all under ``vision_model.``, except in the files of a
``CLIPVisionModel`` written by transformers 5. Beside them
``visual_projection``, a linear layer without bias. The text tower and
``logit_scale`` are left out. Separate query, key and value projections
stack into the fused one.

transformers' CLIP configurations default to QuickGELU, as OpenAI's models
use; for a model trained with GELU the activation must be given. LayerNorm
epsilon 1e-5, CLIP's normalisation; positions resample to the new size.
"""

from __future__ import annotations

import re
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
from clusterclr.models.pretrained.result import clip_input
from clusterclr.models.pretrained.vit_spec import Conventions, Parts, vit_spec

_BLOCK_PARTS = {"norm1.": "layer_norm1.", "norm2.": "layer_norm2.", "attn.proj.": "self_attn.out_proj.", "mlp.": "mlp."}
_TOWER_PARTS = {"patch_embed.": "embeddings.patch_embedding.", "ln_pre.": "pre_layrnorm.", "norm.": "post_layernorm."}
_PROJECTION = "visual_projection.weight"


def recognise(keys: Collection[str]) -> bool:
    return "vision_model.embeddings.class_embedding" in keys or (
        "embeddings.class_embedding" in keys and "pre_layrnorm.weight" in keys
    )


def plan(tensors: Mapping[str, torch.Tensor], family: str, options: ViTOptions, origin: str) -> Plan:
    keys = set(tensors)
    tower = "vision_model." if "vision_model.embeddings.class_embedding" in keys else ""
    layer = f"{tower}encoder.layers.0."
    positions = need(tensors, f"{tower}embeddings.position_embedding.weight", origin).shape[0]
    projection = tensors.get(_PROJECTION)
    spec = vit_spec(
        patch_weight=need(tensors, f"{tower}embeddings.patch_embedding.weight", origin),
        depth=block_count(keys, re.escape(f"{tower}encoder.layers.") + r"(\d+)\."),
        patch_positions=positions - 1,
        mlp_weight=need(tensors, f"{layer}mlp.fc1.weight", origin),
        parts=Parts(
            pre_norm=f"{tower}pre_layrnorm.weight" in keys,
            output_dim=projection.shape[0] if projection is not None else None,
            qkv_bias=f"{layer}self_attn.q_proj.bias" in keys,
            patch_bias=f"{tower}embeddings.patch_embedding.bias" in keys,
        ),
        conventions=Conventions(activation="quick_gelu", norm_eps=1e-5),
        options=options,
        origin=origin,
    )

    def source(name: str) -> Source:
        if name == "cls_token":
            return Source((f"{tower}embeddings.class_embedding",), lambda t: t[0].reshape(1, 1, -1))
        if name == "pos_embed":
            return Source((f"{tower}embeddings.position_embedding.weight",), lambda t: t[0].unsqueeze(0))
        if name == "proj.weight":
            return take(_PROJECTION)
        for ours, theirs in _TOWER_PARTS.items():
            if name.startswith(ours):
                return take(f"{tower}{theirs}{name.removeprefix(ours)}")
        _, index, part = name.split(".", 2)  # blocks.N.part
        prefix = f"{tower}encoder.layers.{index}."
        if part.startswith("attn.qkv."):
            tensor = part.removeprefix("attn.qkv.")
            return Source(tuple(f"{prefix}self_attn.{p}_proj.{tensor}" for p in "qkv"), concatenate)
        for ours, theirs in _BLOCK_PARTS.items():
            if part.startswith(ours):
                return take(f"{prefix}{theirs}{part.removeprefix(ours)}")
        raise KeyError(name)

    def ignored(key: str) -> bool:
        # position_ids: a buffer of position indices that transformers before 4.31 saved, not a weight.
        return key == f"{tower}embeddings.position_ids" or not (key.startswith(tower) or key == _PROJECTION)

    return Plan(spec, source, ignored, clip_input(spec.kwargs["image_size"], spec.kwargs["patch_size"]))
