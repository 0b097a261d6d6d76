"""Loading a weights file into a clusterclr backbone, its family recognised from the tensors' names or named.

The file is read without running anything in it (``reading.py``), the
family's plan tells the architecture from the tensors and where each of the
backbone's tensors comes from, the backbone is built from that spec, and
every tensor is fitted strictly (``fitting.py``): nothing missing, nothing
left over but what the family knowingly leaves out.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from clusterclr.errors import UserError
from clusterclr.models.pretrained import clip, hf_clip, hf_dinov2, resnet, vit_timm
from clusterclr.models.pretrained.fitting import Plan, ViTOptions, described, fit
from clusterclr.models.pretrained.reading import listed, read_weights
from clusterclr.models.pretrained.result import Pretrained


@dataclass(frozen=True)
class _Family:
    recognise: Callable[[Collection[str]], bool]
    plan: Callable[[Mapping[str, torch.Tensor], str, ViTOptions, str], Plan]
    vit: bool


_TORCHVISION = _Family(resnet.recognise_torchvision, resnet.plan_torchvision, vit=False)
_TIMM_VIT = _Family(vit_timm.recognise, vit_timm.plan, vit=True)
_CLIP = _Family(clip.recognise, clip.plan, vit=True)
FAMILIES: dict[str, _Family] = {
    "torchvision-resnet": _TORCHVISION,
    "timm-resnet": _TORCHVISION,  # timm's ResNets keep torchvision's names
    "hf-resnet": _Family(resnet.recognise_hf, resnet.plan_hf, vit=False),
    "timm-vit": _TIMM_VIT,
    "dinov2": _TIMM_VIT,
    "hf-dinov2": _Family(hf_dinov2.recognise, hf_dinov2.plan, vit=True),
    "openai-clip": _CLIP,
    "open-clip": _CLIP,
    "hf-clip": _Family(hf_clip.recognise, hf_clip.plan, vit=True),
}


def load_pretrained(
    path: str | Path,
    family: str = "auto",
    *,
    backbone: str | None = None,
    heads: int | None = None,
    activation: str | None = None,
    pooling: str = "cls",
) -> Pretrained:
    """The backbone holding the weights in ``path``, with their family, preprocessing and spec.

    ``family`` is one of ``FAMILIES`` or ``auto``. ``backbone``, if given,
    is the architecture the caller expects (``resnet50``, ``vit_small``, …);
    a file holding another is refused. A ViT's ``heads`` (when its width does
    not tell them), ``activation`` (``gelu`` or ``quick_gelu``, when the file
    breaks its family's convention) and ``pooling`` (``cls`` or
    ``cls+mean``) are the caller's to choose.
    """
    path = Path(path)
    if family != "auto" and family not in FAMILIES:
        raise UserError(f"unknown weights family {family!r}; choose auto or one of {', '.join(FAMILIES)}")
    weights = read_weights(path)
    keys = weights.tensors.keys()
    found = recognise_family(keys, weights.container)
    if family == "auto":
        if found is None:
            raise UserError(
                f"{path} is in none of the weight layouts clusterclr reads ({', '.join(FAMILIES)}); "
                f"its tensors: {listed(list(keys))}"
            )
        family = found
    elif not FAMILIES[family].recognise(keys):
        looks = f"it looks like {found}" if found else f"its tensors are {listed(list(keys))}"
        raise UserError(f"{path} is not in the {family} layout: {looks}")
    options = ViTOptions(heads, activation, pooling)
    if not FAMILIES[family].vit and options != ViTOptions():
        raise UserError(f"{path} holds a ResNet ({family}); heads, activation and pooling apply to ViTs")
    origin = f"{path} ({family})"
    plan = FAMILIES[family].plan(weights.tensors, family, options, origin)
    if backbone is not None and backbone != plan.spec.name:
        raise UserError(f"{origin} holds a {described(plan.spec)}, not the {backbone} asked for")
    model = plan.spec.build()
    fit(model, weights.tensors, plan, origin)
    return Pretrained(model, family, plan.preprocessing, plan.spec, weights.unwrapped)


def recognise_family(keys: Collection[str], container: str) -> str | None:
    """The family whose names ``keys`` are, or ``None``; ``container`` tells OpenAI's CLIP files from open_clip's."""
    if resnet.recognise_torchvision(keys):
        return "torchvision-resnet"
    if resnet.recognise_hf(keys):
        return "hf-resnet"
    if vit_timm.recognise(keys):
        return "dinov2" if vit_timm.is_dinov2(keys) else "timm-vit"
    if hf_dinov2.recognise(keys):
        return "hf-dinov2"
    if hf_clip.recognise(keys):
        return "hf-clip"
    if clip.recognise(keys):
        return "openai-clip" if container == "torchscript" else "open-clip"
    return None
