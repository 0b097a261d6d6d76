"""Optimisers, their parameter groups, and the learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from clusterclr.config import OptimConfig


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017).

    Each parameter's decayed gradient ``u = g + wd·w`` is scaled by the
    trust ratio ``eta·||w|| / ||u||`` (SimCLR's form). With ``clip`` the
    ratio is capped so the layer's rate never exceeds the global one:
    ``min(eta·||w|| / ||u|| / lr, 1)`` (solo-learn's ``clip_lr``). Groups with
    ``lars_exclude=True`` (biases, norm weights) get plain SGD with momentum.
    """

    def __init__(
        self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001, clip: bool = False
    ):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, clip=clip, lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if not group["lars_exclude"]:
                    update = update.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)
                    ratio = group["eta"] * w_norm / g_norm
                    if group["clip"]:
                        ratio = torch.clamp(ratio / group["lr"], max=1.0)
                    # A zero weight or gradient (fresh or dead layer) has no meaningful ratio.
                    update = update.mul(torch.where((w_norm > 0) & (g_norm > 0), ratio, torch.ones_like(w_norm)))
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(update).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


@dataclass(frozen=True)
class ParameterGroup:
    """Parameters to optimise their own way: declared by a method (``Method.parameter_groups``) or,
    for the backbone, by the config (``optim.backbone_lr_scale``).

    ``lr_scale`` multiplies the group's learning rate at every step (0: the
    group is left out of the optimiser); ``weight_decay`` replaces
    ``optim.weight_decay`` for it (0 also spares it LARS' adaptation, as
    biases are); ``fixed_lr`` keeps it at its peak rate throughout, without
    warm-up or decay (SimSiam's predictor, "fix_pred_lr").
    """

    name: str
    params: tuple[nn.Parameter, ...]
    lr_scale: float = 1.0
    weight_decay: float | None = None
    fixed_lr: bool = False


def optimizer_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """The optimiser's parameter groups: one per distinct (rate, decay) setting, in the model's parameter order.

    Every trainable parameter belongs to the backbone (``model.backbone``,
    scaled by ``optim.backbone_lr_scale``), to a group the model declares
    (``parameter_groups()``), or to the rest ("heads", the base rate).
    Biases and normalisation weights skip decay and LARS where
    ``optim.exclude_bias_and_norm`` says so. Groups with the same settings
    share one optimiser group, and for each rate schedule the decayed group
    comes first: with the defaults that is exactly one decayed and one
    exempt group, as before groups could be declared.
    """
    backbone = getattr(model, "backbone", None)
    declared = [] if backbone is None else [ParameterGroup("backbone", tuple(backbone.parameters()), cfg.backbone_lr_scale)]
    declared += getattr(model, "parameter_groups", list)()
    owner: dict[int, ParameterGroup] = {}
    for group in declared:
        for param in group.params:
            if id(param) in owner:
                raise ValueError(f"a parameter is in both the {owner[id(param)].name} and the {group.name} group")
            owner[id(param)] = group
    rest = ParameterGroup("heads", ())
    settings: dict[tuple, dict] = {}
    for param in model.parameters():
        group = owner.get(id(param), rest)
        if not param.requires_grad or group.lr_scale == 0:
            continue
        exempt = group.weight_decay == 0 or (cfg.exclude_bias_and_norm and param.ndim <= 1)
        decay = 0.0 if exempt else cfg.weight_decay if group.weight_decay is None else group.weight_decay
        entry = settings.setdefault(
            (group.lr_scale, group.fixed_lr, decay, exempt),
            {"params": [], "weight_decay": decay, "lars_exclude": exempt, "lr_scale": group.lr_scale,
             "fixed_lr": group.fixed_lr, "groups": []},
        )
        entry["params"].append(param)
        if group.name not in entry["groups"]:
            entry["groups"].append(group.name)
    schedules = list(dict.fromkeys((g["lr_scale"], g["fixed_lr"]) for g in settings.values()))
    return sorted(settings.values(), key=lambda g: (schedules.index((g["lr_scale"], g["fixed_lr"])), g["lars_exclude"]))


def peak_lr(cfg: OptimConfig) -> float:
    return cfg.lr * cfg.batch_size / 256 if cfg.scale_lr_with_batch else cfg.lr


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimiser over ``optimizer_groups``; each group starts at its own peak rate (``set_learning_rates`` schedules it)."""
    groups = optimizer_groups(model, cfg)
    lr = peak_lr(cfg)
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    if cfg.name == "lars":
        return LARS(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, eta=cfg.lars_eta, clip=cfg.lars_clip)
    for group in groups:
        group.pop("lars_exclude", None)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.weight_decay)


def set_learning_rates(optimizer: torch.optim.Optimizer, step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
    """Give every group its rate at ``step``: its ``lr_scale`` times the schedule (``lr_at``), or times
    ``peak`` for a fixed-rate group. Returns the schedule's own rate (scale 1).

    Checkpoints written before groups had scales hold groups without them: scale 1, scheduled.
    """
    lr = lr_at(step, total_steps, warmup_steps, peak)
    for group in optimizer.param_groups:
        group["lr"] = group.get("lr_scale", 1.0) * (peak if group.get("fixed_lr", False) else lr)
    return lr


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
    """Linear warm-up from 0 to ``peak``, then cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return peak
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return peak * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
