"""Fitting a file's tensors into a backbone, strictly, with errors in the file's own names.

Each family (``resnet.py``, ``vit_timm.py``, …) describes a file as a
``Plan``: the backbone it holds (inferred from the tensors' names and shapes)
and, for every tensor of that backbone, the file tensors it comes from. The
fit is pulled from the backbone's side: every one of its tensors must be
found with the right shape, and every file tensor must be used or be one the
family knowingly leaves out (classifier heads, CLIP's text tower). The first
problem is reported in the file's names, so a user can look it up.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from clusterclr.errors import UserError
from clusterclr.models.backbone_spec import BackboneSpec
from clusterclr.models.pretrained.result import Preprocessing


def _only(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0]


def concatenate(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Separate query, key and value projections as one fused one (they stack in that order)."""
    return torch.cat(tensors, dim=0)


@dataclass(frozen=True)
class Source:
    """The file tensors one backbone tensor is made of, and how."""

    keys: tuple[str, ...]
    combine: Callable[[list[torch.Tensor]], torch.Tensor] = _only
    # Absent from the file, the backbone keeps its own value: batch-norm step counters, which older files lack.
    optional: bool = False


def take(key: str) -> Source:
    return Source((key,))


@dataclass(frozen=True)
class ViTOptions:
    """What a ViT's weights cannot tell: the caller's choices, or ``None`` for the family's convention."""

    heads: int | None = None
    activation: str | None = None
    pooling: str = "cls"


def need(tensors: Mapping[str, torch.Tensor], key: str, origin: str) -> torch.Tensor:
    """A tensor the layout cannot do without to tell the architecture."""
    if key not in tensors:
        raise UserError(f"{origin} has no {key}, which its layout always has (truncated or edited?)")
    return tensors[key]


def block_count(keys: Iterable[str], pattern: str) -> int:
    """One more than the highest block index that ``pattern`` (a regex with one index group) finds; 0 if none."""
    found = re.compile(pattern)
    indices = [int(m.group(1)) for m in map(found.match, keys) if m]
    return max(indices) + 1 if indices else 0


@dataclass(frozen=True)
class Plan:
    """How a family's file becomes a backbone: which one, where each tensor comes from, what it feeds on."""

    spec: BackboneSpec
    source: Callable[[str], Source]
    ignored: Callable[[str], bool]
    preprocessing: Preprocessing


def fit(backbone: nn.Module, state: Mapping[str, torch.Tensor], plan: Plan, origin: str) -> None:
    """Load ``state`` into ``backbone`` through ``plan``; ``origin`` names the file and family in errors."""
    target: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    first_name: dict[int, str] = {}
    for name, expected in backbone.state_dict(keep_vars=True).items():
        # A module registered under two names (ResNet's last_bn) is in the state dict twice; the file has it once.
        alias = first_name.setdefault(id(expected), name)
        if alias != name:
            target[name] = target[alias]
            continue
        source = plan.source(name)
        absent = [key for key in source.keys if key not in state]
        if absent:
            if source.optional:
                target[name] = expected.detach()
                continue
            raise UserError(f"{origin} does not fit a {described(plan.spec)}: it has no {absent[0]}")
        tensors = [state[key] for key in source.keys]
        try:
            value = source.combine(tensors)
        except RuntimeError:  # pieces that do not fit together (query, key and value of different widths)
            value = None
        if value is None or value.shape != expected.shape:
            found = ", ".join(f"{key} is {_shape(t)}" for key, t in zip(source.keys, tensors))
            needed = _shape(expected) if len(source.keys) == 1 else f"{_shape(expected)} from them for its {name}"
            raise UserError(
                f"{origin} does not fit a {described(plan.spec)}: {found} in the file, {needed} needed"
            )
        target[name] = value
        used.update(source.keys)
    unused = [key for key in state if key not in used and not plan.ignored(key)]
    if unused:
        more = f" and {len(unused) - 3} more" if len(unused) > 3 else ""
        raise UserError(
            f"{origin} has weights a {described(plan.spec)} has no place for: {', '.join(unused[:3])}{more}"
        )
    backbone.load_state_dict(target, strict=True)


def described(spec: BackboneSpec) -> str:
    if spec.name == "vit":
        return f"ViT of width {spec.kwargs['dim']}, depth {spec.kwargs['depth']}"
    return spec.name


def _shape(tensor: torch.Tensor) -> str:
    return "(" + ", ".join(map(str, tensor.shape)) + ")"
