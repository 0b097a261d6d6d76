import math

import pytest
import torch

from clusterclr.losses.contrastive import nt_xent
from clusterclr.positives.views import same_image


def reference_nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    """SimCLR's NT-Xent written out term by term in float64 (Chen et al., 2020, Alg. 1)."""
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n = len(z1)
    total = 0.0
    for a in range(2 * n):
        p = (a + n) % (2 * n)
        denominator = sum(math.exp(float(z[a] @ z[b]) / tau) for b in range(2 * n) if b != a)
        total += -math.log(math.exp(float(z[a] @ z[p]) / tau) / denominator)
    return total / (2 * n)


def reference_multi_positive(z: torch.Tensor, positives: torch.Tensor, tau: float) -> float:
    z = z.double() / z.double().norm(dim=1, keepdim=True)
    losses = []
    for a in range(len(z)):
        partners = [p for p in range(len(z)) if positives[a, p] and p != a]
        if not partners:
            continue
        denominator = sum(math.exp(float(z[a] @ z[b]) / tau) for b in range(len(z)) if b != a)
        losses.append(-sum(math.log(math.exp(float(z[a] @ z[p]) / tau) / denominator) for p in partners) / len(partners))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("n, dim, tau", [(1, 3, 0.5), (5, 8, 0.5), (7, 16, 0.1), (4, 2, 1.0)])
def test_nt_xent_equals_float64_reference(n, dim, tau):
    torch.manual_seed(n * 100 + dim)
    z1, z2 = torch.randn(n, dim), torch.randn(n, dim) * 3  # unnormalised on purpose
    loss = nt_xent(torch.cat([z1, z2]), same_image(n, 2), tau)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(reference_nt_xent(z1, z2, tau), rel=1e-5, abs=1e-6)


def test_multi_positive_form_equals_reference_and_skips_anchors_without_positives():
    torch.manual_seed(0)
    z = torch.randn(9, 6)
    positives = torch.rand(9, 9) > 0.6
    positives[3] = False  # an anchor with no positive must not count
    positives[:, 3] = False
    loss = nt_xent(z, positives, 0.3)
    assert loss.item() == pytest.approx(reference_multi_positive(z, positives, 0.3), rel=1e-5)


def test_three_views_each_view_has_two_positives():
    torch.manual_seed(1)
    z = torch.randn(12, 5)  # 4 images × 3 views
    mask = same_image(4, 3)
    assert (mask.sum(1) == 2).all()
    assert nt_xent(z, mask, 0.5).item() == pytest.approx(reference_multi_positive(z, mask, 0.5), rel=1e-5)


def test_gradient_reaches_every_embedding():
    torch.manual_seed(2)
    z = torch.randn(8, 4, requires_grad=True)
    nt_xent(z, same_image(4, 2), 0.5).backward()
    assert torch.isfinite(z.grad).all()
    assert (z.grad.abs().sum(1) > 0).all()


def test_perfectly_aligned_views_give_a_lower_loss_than_random_ones():
    torch.manual_seed(3)
    z1 = torch.randn(16, 32)
    aligned = nt_xent(torch.cat([z1, z1]), same_image(16, 2), 0.5)
    random = nt_xent(torch.cat([z1, torch.randn(16, 32)]), same_image(16, 2), 0.5)
    assert aligned < random


def test_mask_of_wrong_shape_is_rejected():
    with pytest.raises(ValueError, match="masks must be"):
        nt_xent(torch.randn(6, 3), same_image(2, 2), 0.5)


def test_loss_stays_fp32_under_bf16_autocast():
    torch.manual_seed(4)
    z = torch.randn(32, 16)
    mask = same_image(16, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = nt_xent(z, mask, 0.2)
    assert mixed.dtype == torch.float32
    assert mixed.item() == pytest.approx(nt_xent(z, mask, 0.2).item(), rel=1e-6)


def reference_weighted(z: torch.Tensor, weights: torch.Tensor, tau: float) -> float:
    """The weighted multi-positive NT-Xent term by term in float64: each anchor's log-probabilities averaged by its weights."""
    z = z.double() / z.double().norm(dim=1, keepdim=True)
    losses = []
    for a in range(len(z)):
        total = sum(float(weights[a, p]) for p in range(len(z)) if p != a)
        if total == 0:
            continue
        denominator = sum(math.exp(float(z[a] @ z[b]) / tau) for b in range(len(z)) if b != a)
        weighted = sum(
            float(weights[a, p]) * math.log(math.exp(float(z[a] @ z[p]) / tau) / denominator) for p in range(len(z)) if p != a
        )
        losses.append(-weighted / total)
    return sum(losses) / len(losses)


def test_weighted_positives_equal_float64_reference():
    torch.manual_seed(2)
    z = torch.randn(10, 6)
    weights = torch.rand(10, 10) * (torch.rand(10, 10) > 0.5)
    weights[4] = 0.0  # an anchor without positives does not count
    weights[7, 7] = 5.0  # the self pair is excluded whatever its weight
    loss = nt_xent(z, weights, 0.4)
    assert loss.item() == pytest.approx(reference_weighted(z, weights, 0.4), rel=1e-5)
    # Only the shares within a row matter, not the rows' scales.
    rescaled = weights * torch.arange(1, 11, dtype=torch.float32)[:, None]
    assert nt_xent(z, rescaled, 0.4).item() == pytest.approx(loss.item(), rel=1e-6)


def test_full_weights_give_the_boolean_mask_loss_exactly():
    torch.manual_seed(3)
    z = torch.randn(12, 5, requires_grad=True)
    mask = torch.rand(12, 12) > 0.6
    boolean = nt_xent(z, mask, 0.5)
    (grad_boolean,) = torch.autograd.grad(boolean, z)
    weighted = nt_xent(z, mask.float(), 0.5)
    (grad_weighted,) = torch.autograd.grad(weighted, z)
    assert torch.equal(boolean, weighted) and torch.equal(grad_boolean, grad_weighted)
    assert boolean.item() == pytest.approx(reference_multi_positive(z.detach(), mask, 0.5), rel=1e-5)
