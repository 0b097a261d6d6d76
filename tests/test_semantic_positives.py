"""Semantic positive pairs in the losses and the methods: float64 references, SePP methods, mining schedule, resume."""

import math

import pytest
import torch

import clusterclr
from clusterclr.build import build_parts, load_model
from clusterclr.configure import build_config
from clusterclr.errors import UserError
from clusterclr.losses.contrastive import info_nce, nt_xent
from clusterclr.methods.base import Batch
from clusterclr.methods.sepp import partner_negative_cosine
from clusterclr.methods.training_images import TrainingImages
from clusterclr.positives import sampler
from clusterclr.positives.semantic import (
    mine_partners,
    own_key_or_partners,
    same_image_or_partners,
)
from clusterclr.rundir import RunDir
from clusterclr.runlog import read_log

TINY = ["model.width=0.125", "optim.batch_size=128", "train.progress=false", "train.report=false", "train.eval_every=0", "train.log_every=1"]
HEADS = {
    "simclr": ["method.projection_hidden_dim=32", "method.projection_dim=16"],
    "moco_v2": ["method.projection_hidden_dim=32", "method.projection_dim=16", "method.queue_size=256"],
    "simsiam": ["method.projection_hidden_dim=32", "method.projection_dim=32", "method.predictor_hidden_dim=8"],
}


# -- losses against float64 references -------------------------------------------------------


def shared_mean(own: list[float], partners: list[float], share: float | None) -> float:
    """The mean of log-probabilities over an anchor's positives: all alike (share None), or own 1 − share, partners share."""
    if share is None or not partners:
        return sum(own + partners) / len(own + partners)
    return (1 - share) * sum(own) / len(own) + share * sum(partners) / len(partners)


def reference_simclr_with_partners(z1, z2, partner_pairs, tau, share=None):
    """Multi-positive NT-Xent written out: a view's positives are its image's other view and both views of its partners."""
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n = len(z1)
    image = lambda a: a % n  # noqa: E731
    partnered = {(a, b) for a, b in partner_pairs} | {(b, a) for a, b in partner_pairs}
    total = 0.0
    for a in range(2 * n):
        denominator = sum(math.exp(float(z[a] @ z[b]) / tau) for b in range(2 * n) if b != a)
        log_prob = lambda p: math.log(math.exp(float(z[a] @ z[p]) / tau) / denominator)  # noqa: E731
        own = [log_prob(p) for p in range(2 * n) if p != a and image(p) == image(a)]
        partners = [log_prob(p) for p in range(2 * n) if (image(a), image(p)) in partnered]
        total += -shared_mean(own, partners, share)
    return total / (2 * n)


def reference_moco_with_partners(q, k, queue, partner_pairs, tau, share=None):
    """InfoNCE written out: query i's positives are key i and its partners' keys; negatives the rest and the queue."""
    q, candidates = q.double(), torch.cat([k, queue]).double()
    q, candidates = q / q.norm(dim=1, keepdim=True), candidates / candidates.norm(dim=1, keepdim=True)
    partnered = {(a, b) for a, b in partner_pairs} | {(b, a) for a, b in partner_pairs}
    total = 0.0
    for i in range(len(q)):
        denominator = sum(math.exp(float(q[i] @ c) / tau) for c in candidates)
        log_prob = lambda p: math.log(math.exp(float(q[i] @ candidates[p]) / tau) / denominator)  # noqa: E731
        total += -shared_mean([log_prob(i)], [log_prob(j) for j in range(len(k)) if (i, j) in partnered], share)
    return total / len(q)


def mask_of(pairs, n):
    mask = torch.zeros(n, n, dtype=torch.bool)
    for a, b in pairs:
        mask[a, b] = mask[b, a] = True
    return mask


PAIRS = [[], [(0, 3)], [(0, 3), (1, 2), (3, 4)]]


@pytest.mark.parametrize("share", [None, 0.5, 0.2])
@pytest.mark.parametrize("pairs", PAIRS)
def test_simclr_with_partners_equals_float64_reference(pairs, share):
    torch.manual_seed(len(pairs))
    z1, z2 = torch.randn(6, 8), torch.randn(6, 8) * 2
    loss = nt_xent(torch.cat([z1, z2]), same_image_or_partners(mask_of(pairs, 6), 2, share), 0.5)
    assert loss.item() == pytest.approx(reference_simclr_with_partners(z1, z2, pairs, 0.5, share), rel=1e-5)


@pytest.mark.parametrize("share", [None, 0.5, 0.2])
@pytest.mark.parametrize("pairs", PAIRS)
def test_moco_with_partners_equals_float64_reference(pairs, share):
    torch.manual_seed(10 + len(pairs))
    q, k, queue = torch.randn(5, 8), torch.randn(5, 8), torch.randn(11, 8)
    candidates = torch.cat([k, queue])
    loss = info_nce(q, candidates, own_key_or_partners(mask_of(pairs, 5), len(candidates), share=share), 0.2)
    assert loss.item() == pytest.approx(reference_moco_with_partners(q, k, queue, pairs, 0.2, share), rel=1e-5)


def test_a_share_leaves_the_own_view_its_part_of_the_weight():
    # Image 0 has partners 1 and 2, image 3 none: view 0's positives are view 4 (its own) and views 1, 2, 5, 6.
    partners = mask_of([(0, 1), (0, 2)], 4)
    weights = same_image_or_partners(partners, 2, share=0.25)
    assert weights.dtype == torch.float32 and torch.allclose(weights.sum(1), torch.ones(8))
    assert weights[0, 4].item() == pytest.approx(0.75)
    assert weights[0, [1, 2, 5, 6]].tolist() == pytest.approx([0.0625] * 4)
    assert weights[3].nonzero().flatten().tolist() == [7] and weights[3, 7].item() == 1.0
    # Without a share each positive weighs the same: the boolean mask, own view 1 of 5.
    assert torch.equal(same_image_or_partners(partners, 2), weights > 0)


def test_partner_attraction_equals_reference_and_stops_gradient_at_the_target():
    torch.manual_seed(4)
    p = torch.randn(5, 6, requires_grad=True)
    z = torch.randn(5, 6, requires_grad=True)
    mask = mask_of([(0, 2), (3, 4)], 5)
    loss = partner_negative_cosine(p, z, mask)
    pd, zd = p.detach().double(), z.detach().double()
    ordered = [(0, 2), (2, 0), (3, 4), (4, 3)]
    expected = -sum(float(pd[a] @ zd[b] / (pd[a].norm() * zd[b].norm())) for a, b in ordered) / len(ordered)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert z.grad is None
    assert (p.grad[[0, 2, 3, 4]].abs().sum(1) > 0).all() and (p.grad[1] == 0).all()  # image 1 has no partner
    assert partner_negative_cosine(p, z, torch.zeros(5, 5, dtype=torch.bool)).item() == 0.0


# -- the methods ---------------------------------------------------------------------------------


def sepp_parts(base: str, *extra: str):
    config = build_config(flags={"method.name": f"sepp_{base}"}, overrides=TINY + HEADS[base] + list(extra))
    return build_parts(config)


@pytest.mark.parametrize("base", sorted(HEADS))
def test_sepp_equals_its_base_without_pairs_and_differs_with_them(base):
    torch.manual_seed(0)
    plain = build_parts(build_config(flags={"method.name": base}, overrides=TINY + HEADS[base]))
    torch.manual_seed(0)
    sepp = sepp_parts(base)
    images = plain.splits.train.images[:32]
    torch.manual_seed(1)
    views = plain.views(images, 2)
    indices = torch.arange(32)
    torch.manual_seed(2)  # MoCo's shuffle-BN draws a permutation
    expected = plain.method.training_step(Batch(views, indices)).loss
    torch.manual_seed(2)
    assert sepp.method.training_step(Batch(views, indices)).loss.item() == pytest.approx(expected.item(), rel=1e-6)
    sepp.method.partners[indices, 0] = indices ^ 1  # 0<->1, 2<->3, ...
    torch.manual_seed(2)
    out = sepp.method.training_step(Batch(views, indices))
    assert out.loss.item() != pytest.approx(expected.item(), rel=1e-3)
    assert out.logs["batch_partners"].item() == 1.0


def test_moco_mines_with_its_momentum_backbone_and_no_gradient_reaches_it():
    parts = sepp_parts("moco_v2")
    method = parts.method
    encoder, modules, batch_statistics = method.mining_encoder()
    assert encoder is method.momentum_encoder.network[0] and modules == (method.momentum_encoder,) and not batch_statistics
    images = parts.splits.train.images[:16]
    method.partners[torch.arange(16), 0] = torch.arange(16) ^ 1
    method.training_step(Batch(parts.views(images, 2), torch.arange(16))).loss.backward()
    assert all(p.grad is None for p in method.momentum_encoder.parameters())
    assert all(p.grad is not None for p in method.backbone.parameters())


def training_images(parts) -> TrainingImages:
    train = parts.splits.train
    return TrainingImages(train.images, train.labels, parts.views, parts.device, 512)


def test_pairs_refresh_on_schedule_and_land_in_the_buffer(monkeypatch):
    parts = sepp_parts("simclr", "positives.warmup_epochs=2", "positives.refresh_every=3", "positives.neighbours=2")
    mined_at = []
    mine = sampler.mine_partners

    def counting(features, neighbours, threshold, **filters):
        mined_at.append(epoch)
        assert features.shape == (len(parts.splits.train), parts.method.backbone.feature_dim)
        assert filters == {"space": "centred", "mutual": True, "quantile": None}
        return mine(features, neighbours, threshold, mutual=False)

    monkeypatch.setattr(sampler, "mine_partners", counting)
    images = training_images(parts)
    logged = []
    for epoch in range(10):
        logs = parts.method.on_epoch_start(epoch, images)
        if logs:
            logged.append(epoch)
            assert set(logs) == {"pairs", "images_with_partner", "pair_similarity", "pair_precision"}
            assert logs["pairs"] == 2 * len(parts.splits.train) and 0 <= logs["pair_precision"] <= 1
    assert mined_at == logged == [2, 5, 8]
    partners = parts.method.partners
    assert (partners >= 0).all() and not (partners == torch.arange(len(partners))[:, None]).any()


def test_without_a_refresh_period_partners_are_mined_once_after_the_warm_up():
    parts = sepp_parts("simclr", "positives.warmup_epochs=3", "positives.refresh_every=null")
    assert [e for e in range(20) if parts.method.is_mining_epoch(e)] == [3]


def test_a_given_encoder_is_mined_before_the_first_epoch_whatever_the_warm_up(tmp_path):
    # A preset's warm-up is for self-mining; it must not hold back a user's --set positives.encoder.
    parts = sepp_parts("simclr", "positives.warmup_epochs=10", "positives.refresh_every=5", f"positives.encoder={tmp_path}")
    assert [e for e in range(40) if parts.method.is_mining_epoch(e)] == [0]


def test_simclr_can_mine_with_an_ema_of_its_backbone():
    parts = sepp_parts("simclr", "positives.mine_with=momentum", "positives.momentum=0.5")
    method = parts.method
    encoder, modules, batch_statistics = method.mining_encoder()
    assert encoder is method.mining_ema and modules == (method.mining_ema,) and batch_statistics
    assert all(not p.requires_grad for p in method.mining_ema.parameters())
    online = dict(method.backbone.named_parameters())
    before = {k: p.clone() for k, p in method.mining_ema.network[0].named_parameters()}
    images = parts.splits.train.images[:16]
    method.training_step(Batch(parts.views(images, 2), torch.arange(16))).loss.backward()
    torch.optim.SGD(method.parameters(), lr=0.5).step()
    method.after_optimizer_step(0.1)
    for key, value in method.mining_ema.network[0].named_parameters():
        torch.testing.assert_close(value, 0.5 * before[key] + 0.5 * online[key].detach())
    # Its batch norm never runs in training steps: it mines with the clean images' own statistics.
    logs = method.on_epoch_start(10, training_images(parts))
    assert logs["pairs"] > 0
    # The default mines with the backbone itself and keeps no copy.
    plain = sepp_parts("simclr").method
    assert plain.mining_ema is None and plain.mining_encoder()[0] is plain.backbone
    moco = sepp_parts("moco_v2", "positives.mine_with=online").method
    assert moco.mining_encoder()[0] is moco.backbone and moco.mining_ema is None


def test_a_given_encoder_is_mined_once_from_the_start_with_its_own_views(tmp_path):
    encoder_run = tmp_path / "encoder"
    clusterclr.train(build_config(flags={"train.epochs": 0}, overrides=TINY + HEADS["simclr"]), out=encoder_run)
    for path in (encoder_run, RunDir(encoder_run).checkpoint):
        parts = sepp_parts("moco_v2", f"positives.encoder={path}")
        assert parts.config.positives.first_mining_epoch() == 0
        given, _ = load_model(RunDir(encoder_run))
        features = training_images(parts)
        expected = mine_partners(
            TrainingImages(features.images, None, given.views, given.device, 512).encode(given.method.embed, given.method),
            1,
            space="centred",  # the defaults
            mutual=True,
        ).partners
        assert parts.method.on_epoch_start(0, features)["pairs"] > 0
        assert torch.equal(parts.method.partners, expected)
        assert [e for e in range(12) if parts.method.is_mining_epoch(e)] == [0]


def test_an_encoder_for_other_images_or_a_missing_one_is_a_clear_error(tmp_path):
    import numpy as np

    encoder_run = tmp_path / "encoder"
    clusterclr.train(build_config(flags={"train.epochs": 0}, overrides=TINY + HEADS["simclr"]), out=encoder_run)
    path = tmp_path / "rgb.npz"
    np.savez(path, x=np.random.default_rng(0).integers(0, 256, (40, 12, 12, 3), dtype=np.uint8))
    config = build_config(
        flags={"method.name": "sepp_simclr", "data.dataset": "npz", "data.root": str(path)},
        overrides=TINY + HEADS["simclr"] + ["optim.batch_size=16", "clusters=2", f"positives.encoder={encoder_run}"],
    )
    parts = build_parts(config)
    with pytest.raises(UserError, match="trained on 1-channel 8×8 images but the training images are 3-channel 12×12"):
        parts.method.on_epoch_start(0, training_images(parts))
    config = build_config(
        flags={"method.name": "sepp_simclr", "data.dataset": "npz", "data.root": str(path)},
        overrides=TINY + HEADS["simclr"] + ["optim.batch_size=16", "clusters=2", f"positives.encoder={tmp_path / 'nowhere'}"],
    )
    parts = build_parts(config)
    with pytest.raises(UserError, match="no checkpoint at"):
        parts.method.on_epoch_start(0, training_images(parts))


def test_resumed_sepp_run_equals_uninterrupted_run(tmp_path, interrupt_after_epoch):
    overrides = TINY + HEADS["simclr"] + ["train.checkpoint_every=1", "positives.warmup_epochs=0", "positives.refresh_every=2"]
    config = build_config(flags={"method.name": "sepp_simclr", "train.epochs": 2}, overrides=overrides)
    whole = tmp_path / "whole"
    clusterclr.train(config, out=whole)
    interrupted = tmp_path / "interrupted"
    # After a mining epoch and before the next one: resumes on the saved pairs.
    interrupt_after_epoch(config, interrupted, epoch=1)
    clusterclr.resume(interrupted)

    def losses(run):
        return [(r["step"], r["loss"]) for r in read_log(RunDir(run).log) if r["kind"] == "step"]

    assert losses(interrupted) == losses(whole)
    assert [r["epoch"] for r in read_log(RunDir(whole).log) if r["kind"] == "method"] == [0]
    a = torch.load(RunDir(whole).checkpoint, weights_only=True)["method"]
    b = torch.load(RunDir(interrupted).checkpoint, weights_only=True)["method"]
    assert torch.equal(a["partners"], b["partners"]) and (a["partners"] >= 0).any()


# -- configuration -------------------------------------------------------------------------------


def test_positives_config_defaults_and_errors(tmp_path):
    config = build_config(flags={"method.name": "sepp_simsiam"})
    assert config.positives.neighbours == 1 and config.positives.first_mining_epoch() == 10
    given = build_config(flags={"method.name": "sepp_simsiam"}, overrides=["positives.encoder=some/run"])
    assert given.positives.encoder.startswith("/") and given.positives.first_mining_epoch() == 0
    # A run saved when null meant "the default" still loads.
    assert build_config(flags={"method.name": "sepp_simsiam"}, overrides=["positives.warmup_epochs=null"]).positives.warmup_epochs == 10
    assert build_config(flags={"method.name": "simclr"}).positives is None
    with pytest.raises(UserError, match="positives.neighbours, positives.threshold is set but method 'simclr'"):
        build_config(overrides=["positives.neighbours=2", "positives.threshold=0.9"])
    with pytest.raises(UserError, match="'positives.threshold'"):
        build_config(flags={"method.name": "sepp_simclr"}, overrides=["positives.threshold=1.5"])
    with pytest.raises(UserError, match="unknown key 'positives.k'"):
        build_config(flags={"method.name": "sepp_simclr"}, overrides=["positives.k=3"])
    with pytest.raises(UserError, match="'method.partner_weight'"):
        build_config(flags={"method.name": "sepp_simsiam"}, overrides=["method.partner_weight=-1"])
    defaults = build_config(flags={"method.name": "sepp_moco_v2"}).positives
    assert (defaults.space, defaults.mutual, defaults.quantile, defaults.partner_share) == ("centred", True, None, 0.5)


@pytest.mark.parametrize(
    "method, override, message",
    [
        ("sepp_simsiam", "positives.partner_share=0.3", "positives.partner_share=0.3 does not apply to method 'sepp_simsiam'"),
        ("sepp_simclr", "positives.partner_share=1", "'positives.partner_share'"),
        ("sepp_simclr", "positives.quantile=1", "'positives.quantile'"),
        ("sepp_simclr", "positives.space=sphered", "'positives.space'"),
        ("sepp_simclr", "positives.mine_with=target", "'positives.mine_with'"),
    ],
)
def test_bad_mining_options_are_reported(method, override, message):
    with pytest.raises(UserError, match=message):
        build_config(flags={"method.name": method}, overrides=[override])


def test_saved_configs_validate_again():
    import yaml

    for method in ("simclr", "sepp_moco_v2"):
        config = build_config(flags={"method.name": method})
        assert build_config(yaml.safe_load(config.to_yaml())) == config
