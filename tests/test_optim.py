import math

import pytest
import torch

from clusterclr.config import OptimConfig
from clusterclr.optim import LARS, build_optimizer, lr_at, optimizer_groups, peak_lr


def test_warmup_then_cosine():
    total, warmup, peak = 100, 10, 1.0
    assert lr_at(0, total, warmup, peak) == pytest.approx(0.1)
    assert lr_at(9, total, warmup, peak) == pytest.approx(1.0)
    assert lr_at(55, total, warmup, peak) == pytest.approx(0.5)
    assert lr_at(100, total, warmup, peak) == pytest.approx(0.0, abs=1e-12)
    values = [lr_at(s, total, warmup, peak) for s in range(warmup, total)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_peak_lr_scales_with_batch():
    assert peak_lr(OptimConfig(lr=0.3, batch_size=512)) == pytest.approx(0.6)
    assert peak_lr(OptimConfig(lr=0.3, batch_size=512, scale_lr_with_batch=False)) == pytest.approx(0.3)


def test_biases_and_norms_skip_weight_decay():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    decay, no_decay = optimizer_groups(model, OptimConfig(weight_decay=0.1, exclude_bias_and_norm=True))
    assert [p.ndim for p in decay["params"]] == [2]
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 3


def test_lars_step_equals_formula():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5, 3))
    w0 = w.detach().clone()
    w.grad = torch.randn(5, 3)
    lr, wd, trust = 0.5, 1e-2, 1e-3
    LARS([w], lr=lr, momentum=0.9, weight_decay=wd, eta=trust).step()
    update = w.grad + wd * w0
    scale = trust * w0.norm() / update.norm()
    assert torch.allclose(w.detach(), w0 - lr * scale * update)


def reference_lars_step(w, g, buf, lr, wd, eta, momentum, clip, exclude):
    update = g.clone()
    if not exclude:
        update = update + wd * w
        ratio = eta * w.norm() / update.norm()
        if clip:
            ratio = min(float(ratio) / lr, 1.0)
        update = update * ratio
    buf = update if buf is None else momentum * buf + update
    return w - lr * buf, buf


@pytest.mark.parametrize("clip", [False, True])
def test_lars_two_steps_with_momentum_and_excluded_group(clip):
    torch.manual_seed(1)
    w = torch.nn.Parameter(torch.randn(4, 3))
    b = torch.nn.Parameter(torch.randn(3))
    lr, wd, eta, momentum = 0.3, 1e-3, 0.02, 0.9
    opt = LARS([{"params": [w]}, {"params": [b], "weight_decay": 0.0, "lars_exclude": True}],
               lr=lr, momentum=momentum, weight_decay=wd, eta=eta, clip=clip)
    ref_w, ref_b, buf_w, buf_b = w.detach().clone(), b.detach().clone(), None, None
    for _ in range(2):
        gw, gb = torch.randn(4, 3), torch.randn(3)
        w.grad, b.grad = gw.clone(), gb.clone()
        opt.step()
        ref_w, buf_w = reference_lars_step(ref_w, gw, buf_w, lr, wd, eta, momentum, clip, exclude=False)
        ref_b, buf_b = reference_lars_step(ref_b, gb, buf_b, lr, 0.0, eta, momentum, clip, exclude=True)
    assert torch.allclose(w.detach(), ref_w, atol=1e-6)
    assert torch.allclose(b.detach(), ref_b, atol=1e-6)


def test_lars_leaves_zero_weights_to_plain_sgd():
    w = torch.nn.Parameter(torch.zeros(3))
    w.grad = torch.ones(3)
    LARS([w], lr=0.1, momentum=0.0).step()
    assert torch.allclose(w.detach(), torch.full((3,), -0.1))


@pytest.mark.parametrize("name", ["sgd", "lars", "adam", "adamw"])
def test_every_optimizer_builds_and_steps(name):
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(model, OptimConfig(name=name))
    model(torch.randn(4, 3)).pow(2).mean().backward()
    before = model.weight.detach().clone()
    opt.step()
    assert not torch.equal(before, model.weight) and math.isfinite(float(model.weight.detach().sum()))
