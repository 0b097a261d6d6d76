"""Optimisers and the learning-rate schedule."""

from __future__ import annotations

import math

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


def parameter_groups(model: nn.Module, weight_decay: float, exclude_bias_and_norm: bool) -> list[dict]:
    """Split parameters so biases and normalisation weights can skip decay (and LARS).

    A model may name parameters that never decay whatever the config says
    (``parameters_without_weight_decay()``, e.g. cluster centres, which decay
    would drag towards the origin).
    """
    exempt = {id(p) for p in getattr(model, "parameters_without_weight_decay", list)()}
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (no_decay if id(param) in exempt or (exclude_bias_and_norm and param.ndim <= 1) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lars_exclude": True})
    return groups


def peak_lr(cfg: OptimConfig) -> float:
    return cfg.lr * cfg.batch_size / 256 if cfg.scale_lr_with_batch else cfg.lr


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg.weight_decay, cfg.exclude_bias_and_norm)
    lr = peak_lr(cfg)
    if cfg.name == "lars":
        return LARS(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, eta=cfg.lars_eta, clip=cfg.lars_clip)
    for group in groups:
        group.pop("lars_exclude", None)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.weight_decay)


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
    """Linear warm-up from 0 to ``peak``, then cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return peak
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return peak * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
