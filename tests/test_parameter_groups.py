"""Parameter groups: each with its own rate and decay, the backbone's scaled by the config (0 freezes it)."""

import math

import pytest
import torch

import clusterclr
from clusterclr.build import build_parts
from clusterclr.configure import build_config
from clusterclr.io import load_checkpoint
from clusterclr.optim import optimizer_groups
from clusterclr.rundir import RunDir
from clusterclr.runlog import read_log
from clusterclr.training.loop import Trainer

TINY = [
    "model.width=0.125", "optim.batch_size=128", "train.progress=false", "train.report=false",
    "train.eval_every=0", "train.checkpoint_every=1", "train.log_every=1",
]
HEADS = {
    "simclr": ["method.projection_hidden_dim=32", "method.projection_dim=16"],
    "moco_v2": ["method.projection_hidden_dim=32", "method.projection_dim=16", "method.queue_size=256"],
    "simsiam": ["method.projection_hidden_dim=32", "method.projection_dim=32", "method.predictor_hidden_dim=8"],
    "byol": ["method.projection_hidden_dim=32", "method.projection_dim=16", "method.predictor_hidden_dim=32"],
    "center_predictor": ["method.projection_hidden_dim=32", "method.projection_dim=16"],
    "cc": ["method.projection_hidden_dim=32", "method.projection_dim=16"],
}


def config(method: str, *extra: str, epochs: int = 1):
    return build_config(flags={"method.name": method, "train.epochs": epochs}, overrides=TINY + HEADS[method] + list(extra))


def split_before_groups(model: torch.nn.Module, weight_decay: float, exempt: list) -> list[dict]:
    """The optimiser groups as clusterclr made them before groups could be declared: decayed, then exempt."""
    exempt_ids = {id(p) for p in exempt}
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if id(param) in exempt_ids or param.ndim <= 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True}]


@pytest.mark.parametrize("method", sorted(HEADS))
def test_default_groups_equal_the_split_before_groups(method):
    cfg = config(method)
    model = build_parts(cfg).method
    exempt = [model.centres.centres] if method == "center_predictor" else []
    groups = optimizer_groups(model, cfg.optim)
    expected = split_before_groups(model, cfg.optim.weight_decay, exempt)
    assert len(groups) == len(expected) == 2
    for got, want in zip(groups, expected):
        assert [id(p) for p in got["params"]] == [id(p) for p in want["params"]]
        assert got["weight_decay"] == want["weight_decay"]
        assert got["lars_exclude"] == want.get("lars_exclude", False)
        assert (got["lr_scale"], got["fixed_lr"]) == (1.0, False)


def reference_rate(step: int, total: int, warmup: int, peak: float, scale: float, fixed: bool) -> float:
    """Linear warm-up, then half a cosine to 0, in float64; a fixed group stays at its peak."""
    if fixed:
        return scale * peak
    if step < warmup:
        return scale * peak * (step + 1) / warmup
    return scale * peak / 2 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


@pytest.mark.parametrize(("method", "settings", "scales"), [
    ("simsiam", ["method.fix_pred_lr=true", "optim.backbone_lr_scale=0.25"],
     {"backbone": (0.25, False), "predictor": (1.0, True), "projector": (1.0, False)}),
    ("center_predictor", ["method.centre_lr_scale=10", "optim.backbone_lr_scale=0.5"],
     {"backbone": (0.5, False), "centres": (10.0, False), "projector": (1.0, False)}),
])
def test_each_group_follows_its_own_schedule(tmp_path, method, settings, scales):
    cfg = config(method, "optim.warmup_epochs=1", *settings, epochs=3)
    trainer = Trainer(build_parts(cfg), RunDir(tmp_path / "run"))
    peak = cfg.optim.lr * cfg.optim.batch_size / 256
    owner = {id(p): group for group in trainer.optimizer.param_groups for p in group["params"]}
    modules = {name: getattr(trainer.method, name) for name in scales}
    assert trainer.total_steps == 3 * trainer.steps_per_epoch and trainer.warmup_steps == trainer.steps_per_epoch
    for step in range(trainer.total_steps):
        base = trainer.set_learning_rate(step)
        assert base == pytest.approx(reference_rate(step, trainer.total_steps, trainer.warmup_steps, peak, 1.0, False), rel=1e-12)
        for name, (scale, fixed) in scales.items():
            expected = reference_rate(step, trainer.total_steps, trainer.warmup_steps, peak, scale, fixed)
            for param in modules[name].parameters():
                assert owner[id(param)]["lr"] == pytest.approx(expected, rel=1e-12), (name, step)
    if method == "center_predictor":  # centres keep no weight decay, whatever their rate
        assert owner[id(trainer.method.centres.centres)]["weight_decay"] == 0.0


def test_a_zero_backbone_scale_freezes_it_while_the_heads_train(tmp_path):
    cfg = config("moco_v2", "optim.backbone_lr_scale=0")
    torch.manual_seed(cfg.seed)  # what the run builds first
    initial = build_parts(cfg).method
    run = clusterclr.train(cfg, out=tmp_path / "run")
    trained = run.method
    # Weights and batch-norm statistics alike: the online backbone and its momentum copy.
    for before, after in [(initial.backbone, trained.backbone), (initial.momentum_encoder.network[0], trained.momentum_encoder.network[0])]:
        assert before.state_dict().keys() == after.state_dict().keys()
        assert all(torch.equal(value, after.state_dict()[key]) for key, value in before.state_dict().items())
    assert not torch.equal(initial.projector[0].weight, trained.projector[0].weight)
    # No gradient was ever computed for it, and the optimiser does not hold it.
    assert all(not p.requires_grad and p.grad is None for p in trained.backbone.parameters())
    optimised = {id(p) for group in Trainer(build_parts(cfg), RunDir(tmp_path / "x")).optimizer.param_groups for p in group["params"]}
    assert optimised and not optimised & {id(p) for p in trained.backbone.parameters()}


def test_resuming_a_run_with_groups_is_exact(tmp_path, interrupt_after_epoch):
    cfg = config("simsiam", "method.fix_pred_lr=true", "optim.backbone_lr_scale=0.5", epochs=2)
    whole = tmp_path / "whole"
    clusterclr.train(cfg, out=whole)
    groups = load_checkpoint(RunDir(whole).checkpoint)["optimizer"]["param_groups"]
    assert {(g["lr_scale"], g["fixed_lr"]) for g in groups} == {(0.5, False), (1.0, True), (1.0, False)}
    assert [g["groups"] for g in groups[::2]] == [["backbone"], ["heads"], ["predictor"]]

    interrupted = tmp_path / "interrupted"
    interrupt_after_epoch(cfg, interrupted, epoch=1)
    clusterclr.resume(interrupted)
    losses = [[(r["step"], r["lr"], r["loss"]) for r in read_log(RunDir(run).log) if r["kind"] == "step"] for run in (whole, interrupted)]
    assert losses[0] == losses[1]
    a, b = (load_checkpoint(RunDir(run).checkpoint)["method"] for run in (whole, interrupted))
    assert all(torch.equal(a[k], b[k]) for k in a)
