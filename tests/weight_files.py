"""Weight files in the published layouts, written by the tests: every tensor name of the real files, any size.

- ``torchvision_resnet``: torchvision's ResNet state dicts (``conv1``, ``bn1``,
  ``layerS.B.convK``/``bnK``, ``downsample.0/1``, ``fc``), at a width of ``base``
  channels in the stem (64 in the real files);
- ``dinov2_checkpoint``: facebookresearch/dinov2's ``dinov2_vit*14*_pretrain.pth``
  (``cls_token``, ``pos_embed``, ``mask_token``, ``patch_embed.proj``,
  ``blocks.N.*`` with LayerScale, ``norm``, optionally ``register_tokens``);
- ``CLIP``: OpenAI CLIP's model (clip/model.py), tiny; scripted and saved it is
  the TorchScript archive OpenAI publishes (``ViT-B-16.pt``);
- ``hf_dinov2``, ``hf_clip``, ``hf_resnet``: transformers' models, tiny and
  ``randomize``d, the references the loaded backbones are checked against;
  ``torchvision_layout`` renames a transformers ResNet's tensors to torchvision's.
"""

import re
from collections import OrderedDict

import pytest
import torch
from torch import nn


def torchvision_resnet(bottleneck: bool, blocks: tuple[int, ...], counters: bool, base: int = 64) -> dict:
    """Every tensor of torchvision's resnet18/resnet50 state dict (at ``base`` stem channels), random values."""
    shapes: dict[str, tuple[int, ...]] = {}

    def batch_norm(prefix: str, channels: int) -> None:
        for t in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{t}"] = (channels,)
        if counters:
            shapes[f"{prefix}.num_batches_tracked"] = ()

    shapes["conv1.weight"] = (base, 3, 7, 7)
    batch_norm("bn1", base)
    channels_in = base
    for stage, (count, planes) in enumerate(zip(blocks, (base, 2 * base, 4 * base, 8 * base))):
        out = planes * (4 if bottleneck else 1)
        for b in range(count):
            prefix = f"layer{stage + 1}.{b}"
            if bottleneck:
                convs = [(planes, channels_in, 1), (planes, planes, 3), (out, planes, 1)]
            else:
                convs = [(planes, channels_in, 3), (planes, planes, 3)]
            for k, (o, i, size) in enumerate(convs, 1):
                shapes[f"{prefix}.conv{k}.weight"] = (o, i, size, size)
                batch_norm(f"{prefix}.bn{k}", o)
            if b == 0 and (stage > 0 or channels_in != out):
                shapes[f"{prefix}.downsample.0.weight"] = (out, channels_in, 1, 1)
                batch_norm(f"{prefix}.downsample.1", out)
            channels_in = out
    shapes |= {"fc.weight": (1000, channels_in), "fc.bias": (1000,)}
    generator = torch.Generator().manual_seed(2)
    return {
        k: torch.tensor(5) if k.endswith("tracked") else torch.rand(shape, generator=generator) + 0.1
        for k, shape in shapes.items()
    }


def dinov2_checkpoint(dim: int, depth: int, patch: int, grid: int, registers: int = 0) -> dict:
    """Every tensor of an official DINOv2 checkpoint of this shape (a ``grid`` × ``grid`` position grid), random values."""
    shapes = {"cls_token": (1, 1, dim), "pos_embed": (1, 1 + grid * grid, dim), "mask_token": (1, dim)}
    shapes |= {"patch_embed.proj.weight": (dim, 3, patch, patch), "patch_embed.proj.bias": (dim,)}
    shapes |= {"norm.weight": (dim,), "norm.bias": (dim,)}
    if registers:
        shapes["register_tokens"] = (1, registers, dim)
    for i in range(depth):
        block = {"norm1": (dim,), "attn.qkv": (3 * dim, dim), "attn.proj": (dim, dim), "norm2": (dim,)}
        block |= {"mlp.fc1": (4 * dim, dim), "mlp.fc2": (dim, 4 * dim)}
        for part, shape in block.items():
            shapes |= {f"blocks.{i}.{part}.weight": shape, f"blocks.{i}.{part}.bias": shape[:1]}
        shapes |= {f"blocks.{i}.ls1.gamma": (dim,), f"blocks.{i}.ls2.gamma": (dim,)}
    generator = torch.Generator().manual_seed(3)
    state = {k: 0.1 * torch.randn(shape, generator=generator) for k, shape in shapes.items()}
    for key in state:
        if key.endswith(("norm1.weight", "norm2.weight", "norm.weight")):
            state[key] += 1
    return state


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """OpenAI CLIP's block (clip/model.py), sequence-first as there."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        layers = [("c_fc", nn.Linear(width, 4 * width)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(4 * width, width))]
        self.mlp = nn.Sequential(OrderedDict(layers))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


class VisionTransformer(nn.Module):
    """OpenAI CLIP's image tower (clip/model.py), tiny."""

    def __init__(self, resolution: int = 28, patch: int = 7, width: int = 32, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        output_dim = 16
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width))
        self.positional_embedding = nn.Parameter(torch.randn((resolution // patch) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.randn(width, output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x).permute(1, 0, 2)
        x = self.transformer(x).permute(1, 0, 2)
        return self.ln_post(x[:, 0, :]) @ self.proj


class CLIP(nn.Module):
    def __init__(self, **tower) -> None:
        super().__init__()
        self.visual = VisionTransformer(**tower)
        self.token_embedding = nn.Embedding(10, 32)
        self.logit_scale = nn.Parameter(torch.ones([]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x) * self.logit_scale


# ---------------------------------------------------------------- transformers' reference models


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere (norm gains near 1, positive variances), so a misplaced tensor shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32).to(tensor.dtype)
            if name.endswith("running_var"):
                tensor.copy_(noise.abs() + 0.5)
            elif tensor.ndim == 1 and name.endswith(("weight", "gamma", "lambda1")):
                tensor.copy_(1 + 0.1 * noise)
            else:
                tensor.copy_(0.1 * noise)
    return model.eval()


def hf_dinov2(registers: int = 0, hidden: int = 128, heads: int = 2):
    transformers = pytest.importorskip("transformers")
    options = {"hidden_size": hidden, "num_hidden_layers": 2, "num_attention_heads": heads, "mlp_ratio": 2}
    options |= {"image_size": 28, "patch_size": 7}
    if registers:
        config = transformers.Dinov2WithRegistersConfig(num_register_tokens=registers, **options)
        return randomize(transformers.Dinov2WithRegistersModel(config))
    return randomize(transformers.Dinov2Model(transformers.Dinov2Config(**options)))


def hf_clip(activation: str, projection: bool = True):
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=28,
        patch_size=7, projection_dim=16, hidden_act=activation,
    )
    model = transformers.CLIPVisionModelWithProjection if projection else transformers.CLIPVisionModel
    return randomize(model(config))


def hf_resnet(bottleneck: bool):
    transformers = pytest.importorskip("transformers")
    if bottleneck:  # ResNet-50 at an eighth of its width
        config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[32, 64, 128, 256], depths=[3, 4, 6, 3])
    else:  # ResNet-18 at an eighth of its width
        config = transformers.ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[2, 2, 2, 2], layer_type="basic"
        )
    return randomize(transformers.ResNetModel(config))


def torchvision_layout(hf_state: dict) -> dict:
    """transformers' ResNet tensors under torchvision's names, with a classifier."""
    state = {}
    for key, value in hf_state.items():
        key = key.replace("embedder.embedder.convolution", "conv1").replace("embedder.embedder.normalization", "bn1")
        block = re.match(r"encoder\.stages\.(\d)\.layers\.(\d+)\.(.+)", key)
        if block:
            stage, index, rest = block.groups()
            rest = re.sub(r"layer\.(\d)\.convolution", lambda m: f"conv{int(m.group(1)) + 1}", rest)
            rest = re.sub(r"layer\.(\d)\.normalization", lambda m: f"bn{int(m.group(1)) + 1}", rest)
            rest = rest.replace("shortcut.convolution", "downsample.0")
            rest = rest.replace("shortcut.normalization", "downsample.1")
            key = f"layer{int(stage) + 1}.{index}.{rest}"
        state[key] = value
    features = state["layer4.0.bn1.weight"].shape[0] * (4 if "layer1.0.conv3.weight" in state else 1)
    return state | {"fc.weight": torch.zeros(10, features), "fc.bias": torch.zeros(10)}
