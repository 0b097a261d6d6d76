"""Vision Transformer backbones (Dosovitskiy et al., 2021) that return pooled features.

One implementation covers the ViTs whose published weights clusterclr loads
(``clusterclr.models.pretrained``): timm and DeiT, DINO, DINOv2 with or
without register tokens (Darcet et al., 2024) and CLIP's image tower. What
differs between them is an option here: LayerScale, registers, CLIP's
LayerNorm before the blocks and its output projection, the MLP's activation,
the LayerNorm epsilon, biases, and how the learned position embedding is
resampled when an input's patch grid differs from the one it was trained at.

Tokens are ordered [class, registers, patches]. The class token and the
patches carry learned positions; the registers carry none (as in DINOv2).
The features are the final-normalised class token, optionally concatenated
with the mean patch token (DINOv2's linear evaluation), each optionally
projected (CLIP). There is no batch normalisation: an image's features do not
depend on the rest of its batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = ("gelu", "quick_gelu")
POOLINGS = ("cls", "cls+mean")
# (width, depth, heads) of the standard sizes; every one has 64-dimensional heads.
VIT_SIZES: dict[str, tuple[int, int, int]] = {
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16),
}
VITS = ("vit", *VIT_SIZES)


class QuickGELU(nn.Module):
    """OpenAI CLIP's sigmoid approximation of GELU; its weights were trained with it, so it is kept exactly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    """Multi-head self-attention with one fused query/key/value projection."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"a ViT width of {dim} does not split into {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(n, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, tokens, dim))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, activation: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = QuickGELU() if activation == "quick_gelu" else nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """A learned per-channel gain on a residual branch (Touvron et al., 2021)."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """A pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)), each optionally layer-scaled."""

    def __init__(
        self, dim: int, heads: int, mlp_dim: int, activation: str, layer_scale: float | None, eps: float, qkv_bias: bool
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads, qkv_bias)
        self.ls1 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, mlp_dim, activation)
        self.ls2 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """A ViT trunk; ``forward`` returns pooled features (N × feature_dim) for any input size.

    ``image_size`` is the resolution the position embedding is laid out for
    (``image_size // patch_size`` positions a side); other sizes resample it
    bicubically. ``interpolate_offset`` > 0 resamples as the original DINOv2
    code does, by a scale factor of (new + offset) / old rather than to a
    size; ``interpolate_antialias`` takes PyTorch's antialiased bicubic
    kernel, as timm and DINOv2 with registers do. Each family's weights were
    used one way, and the loader picks it.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        patch_size: int = 16,
        image_size: int = 224,
        in_channels: int = 3,
        mlp_dim: int | None = None,
        activation: str = "gelu",
        layer_scale: float | None = None,
        registers: int = 0,
        pre_norm: bool = False,
        output_dim: int | None = None,
        output_bias: bool = False,
        pooling: str = "cls",
        norm_eps: float = 1e-6,
        qkv_bias: bool = True,
        patch_bias: bool = True,
        interpolate_offset: float = 0.0,
        interpolate_antialias: bool = False,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.patch_size = patch_size
        self.grid = image_size // patch_size
        self.num_prefix_tokens = 1 + registers
        self.pooling = pooling
        self.interpolate_offset = interpolate_offset
        self.interpolate_antialias = interpolate_antialias

        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, patch_size, bias=patch_bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid**2, dim))
        self.registers = nn.Parameter(torch.zeros(1, registers, dim)) if registers else None
        self.ln_pre = nn.LayerNorm(dim, eps=norm_eps) if pre_norm else nn.Identity()
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_dim or 4 * dim, activation, layer_scale, norm_eps, qkv_bias) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.proj = nn.Linear(dim, output_dim, bias=output_bias) if output_dim else nn.Identity()
        self.feature_dim = (output_dim or dim) * (2 if pooling == "cls+mean" else 1)
        self._init_weights()

    def _init_weights(self) -> None:
        # timm's and DINOv2's initialisation for training from scratch; loaded weights replace it.
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.registers is not None:
            nn.init.normal_(self.registers, std=1e-6)

    def patch_positions(self, rows: int, cols: int) -> torch.Tensor:
        """The position embedding of a rows × cols patch grid (1 × rows·cols × dim)."""
        positions = self.pos_embed[:, 1:]
        if (rows, cols) == (self.grid, self.grid):
            return positions
        dim = positions.shape[-1]
        grid = positions.reshape(1, self.grid, self.grid, dim).permute(0, 3, 1, 2)
        if self.interpolate_offset:
            # DINOv2's historical kludge: the offset keeps the output size from flooring one short.
            scale = ((rows + self.interpolate_offset) / self.grid, (cols + self.interpolate_offset) / self.grid)
            resize: dict[str, Any] = {"scale_factor": scale}
        else:
            resize = {"size": (rows, cols)}
        # Bicubic resampling in half precision visibly shifts the embedding, so it runs in float32.
        grid = F.interpolate(
            grid.float(), mode="bicubic", align_corners=False, antialias=self.interpolate_antialias, **resize
        )
        return grid.to(positions.dtype).permute(0, 2, 3, 1).reshape(1, rows * cols, dim)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Final-normalised tokens, N × (1 + registers + patches) × dim: class, registers, then patches row by row."""
        patches = self.patch_embed(x)
        rows, cols = patches.shape[-2:]
        patches = patches.flatten(2).transpose(1, 2) + self.patch_positions(rows, cols)
        n = x.shape[0]
        prefix = [(self.cls_token + self.pos_embed[:, :1]).expand(n, -1, -1)]
        if self.registers is not None:
            prefix.append(self.registers.expand(n, -1, -1))
        out = self.ln_pre(torch.cat([*prefix, patches], dim=1))
        for block in self.blocks:
            out = block(out)
        return self.norm(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.tokens(x)
        pooled = self.proj(tokens[:, 0])
        if self.pooling == "cls+mean":
            patch_mean = self.proj(tokens[:, self.num_prefix_tokens :].mean(dim=1))
            pooled = torch.cat([pooled, patch_mean], dim=1)
        return pooled


def build_vit(name: str, patch_size: int = 16, **options: Any) -> VisionTransformer:
    """``vit_small``, ``vit_base`` or ``vit_large``; or ``vit`` with explicit ``dim``, ``depth`` and ``heads``.

    ``options`` are ``VisionTransformer``'s other arguments. ``vit`` is for
    widths outside the standard sizes: the tiny models of tests, or weights of
    unusual shape.
    """
    if name == "vit":
        missing = [k for k in ("dim", "depth", "heads") if k not in options]
        if missing:
            raise ValueError(f"backbone 'vit' needs {', '.join(missing)}; or choose one of {', '.join(VIT_SIZES)}")
        return VisionTransformer(patch_size=patch_size, **options)
    if name not in VIT_SIZES:
        raise ValueError(f"unknown ViT {name!r}; choose one of {', '.join(VITS)}")
    fixed = sorted({"dim", "depth", "heads"} & set(options))
    if fixed:
        raise ValueError(f"{name} fixes {', '.join(fixed)}; use backbone 'vit' to choose them")
    dim, depth, heads = VIT_SIZES[name]
    return VisionTransformer(dim, depth, heads, patch_size=patch_size, **options)


def vit_name(dim: int, depth: int, heads: int) -> str:
    """The standard size with this shape, or ``vit`` when it is none of them."""
    sizes = {shape: name for name, shape in VIT_SIZES.items()}
    return sizes.get((dim, depth, heads), "vit")

