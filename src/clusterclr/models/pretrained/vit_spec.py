"""The ViT a file holds, told from its tensors: what every ViT family's plan shares.

The shapes give the width, depth, patch size, MLP width and position grid;
which tensors exist gives LayerScale, registers, CLIP's pre-norm and output
projection, and the biases. The head count is not in any shape: published
ViTs use 64-dimensional heads (80 from ViT-H's 1280 up), which is assumed
unless the caller says otherwise. The family supplies what is convention
rather than weight: the activation, the LayerNorm epsilon and how positions
are resampled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from clusterclr.errors import UserError
from clusterclr.models.backbone_spec import BackboneSpec
from clusterclr.models.pretrained.fitting import ViTOptions
from clusterclr.models.vit import ACTIVATIONS, POOLINGS, vit_name

_WIDE_HEADS = {1280: 16, 1408: 16, 1664: 16}  # ViT-H, open_clip's ViT-g and ViT-bigG: wider heads


@dataclass(frozen=True)
class Conventions:
    """A family's choices that its weights do not show."""

    activation: str = "gelu"
    norm_eps: float = 1e-6
    interpolate_offset: float = 0.0
    interpolate_antialias: bool = False


@dataclass(frozen=True)
class Parts:
    """The optional parts a file's ViT has."""

    layer_scale: bool = False
    registers: int = 0
    pre_norm: bool = False
    output_dim: int | None = None
    output_bias: bool = False
    qkv_bias: bool = True
    patch_bias: bool = True


def vit_spec(
    *,
    patch_weight: torch.Tensor,
    depth: int,
    patch_positions: int,
    mlp_weight: torch.Tensor,
    parts: Parts,
    conventions: Conventions,
    options: ViTOptions,
    origin: str,
) -> BackboneSpec:
    """The spec of the ViT whose patch embedding, first MLP layer and position count are these."""
    dim, in_channels, patch_rows, patch_cols = patch_weight.shape
    if patch_rows != patch_cols:
        raise UserError(f"{origin} has {patch_rows}×{patch_cols} patches; clusterclr's ViT takes square ones")
    grid = math.isqrt(patch_positions)
    if grid * grid != patch_positions:
        raise UserError(f"{origin} has {patch_positions} patch positions, which is no square grid")
    heads = options.heads or _WIDE_HEADS.get(dim) or (dim // 64 if dim % 64 == 0 else None)
    if heads is None or dim % heads:
        raise UserError(
            f"{origin} is a ViT of width {dim}, which does not tell its attention heads; "
            f"give the head count (a divisor of {dim})"
        )
    activation = options.activation or conventions.activation
    if activation not in ACTIVATIONS:
        raise UserError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    if options.pooling not in POOLINGS:
        raise UserError(f"unknown pooling {options.pooling!r}; choose one of {', '.join(POOLINGS)}")
    name = vit_name(dim, depth, heads)
    shape = {"dim": dim, "depth": depth, "heads": heads} if name == "vit" else {}
    kwargs = {
        **shape,
        "patch_size": patch_rows,
        "image_size": grid * patch_rows,
        "in_channels": in_channels,
        "mlp_dim": mlp_weight.shape[0],
        "activation": activation,
        # The value only initialises LayerScale for training from scratch; loading overwrites it.
        "layer_scale": 1e-5 if parts.layer_scale else None,
        "registers": parts.registers,
        "pre_norm": parts.pre_norm,
        "output_dim": parts.output_dim,
        "output_bias": parts.output_bias,
        "pooling": options.pooling,
        "norm_eps": conventions.norm_eps,
        "qkv_bias": parts.qkv_bias,
        "patch_bias": parts.patch_bias,
        "interpolate_offset": conventions.interpolate_offset,
        "interpolate_antialias": conventions.interpolate_antialias,
    }
    return BackboneSpec(name, kwargs)
