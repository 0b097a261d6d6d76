"""Momentum encoder, queue, split-batch BN and the InfoNCE / SimSiam / BYOL losses."""

import math

import pytest
import torch
from torch import nn

from clusterclr.losses.contrastive import info_nce
from clusterclr.losses.negative_cosine import negative_cosine
from clusterclr.losses.normalized_mse import normalized_mse
from clusterclr.memory.queue import KeyQueue
from clusterclr.models.heads import MLPHead
from clusterclr.models.momentum import MomentumEncoder, momentum_at
from clusterclr.models.split_batch import forward_in_groups
from clusterclr.positives.views import own_key


def reference_moco_loss(q, k, queue, tau):
    """MoCo's Algorithm 1 in float64: logits [q·k+, q·queue] / τ, cross-entropy with label 0."""
    q, k, queue = (t.double() / t.double().norm(dim=1, keepdim=True) for t in (q, k, queue))
    total = 0.0
    for i in range(len(q)):
        # The other keys of the batch are negatives too, as in our candidates = [keys; queue].
        negatives = [float(q[i] @ k[j]) for j in range(len(k)) if j != i] + [float(q[i] @ n) for n in queue]
        positive = float(q[i] @ k[i])
        denominator = math.exp(positive / tau) + sum(math.exp(s / tau) for s in negatives)
        total += -math.log(math.exp(positive / tau) / denominator)
    return total / len(q)


@pytest.mark.parametrize("n, queue_len, tau", [(4, 0, 0.2), (5, 7, 0.2), (3, 16, 0.07)])
def test_info_nce_with_queue_equals_float64_reference(n, queue_len, tau):
    torch.manual_seed(n + queue_len)
    q, k, queue = torch.randn(n, 8), torch.randn(n, 8), torch.randn(queue_len, 8)
    candidates = torch.cat([k, queue])
    loss = info_nce(q, candidates, own_key(n, len(candidates)), tau)
    assert loss.item() == pytest.approx(reference_moco_loss(q, k, queue, tau), rel=1e-5)


def test_queue_is_fifo_and_bounded():
    queue = KeyQueue(size=5, dim=2)
    assert len(queue.keys()) == 0
    batches = [torch.tensor([[float(i), 1.0]]).repeat(2, 1) * torch.tensor([[1.0], [2.0]]) for i in range(1, 5)]
    queue.enqueue(batches[0])
    assert len(queue.keys()) == 2
    for b in batches[1:]:
        queue.enqueue(b)
    # 8 keys went in, 5 slots: the three oldest were overwritten, in order.
    assert len(queue.keys()) == 5
    newest = torch.nn.functional.normalize(torch.cat(batches), dim=1)[-5:]
    held = {tuple(round(v, 5) for v in row.tolist()) for row in queue.keys()}
    assert held == {tuple(round(v, 5) for v in row.tolist()) for row in newest}
    assert int(queue.pointer) == 8 % 5


def test_queue_takes_a_batch_larger_than_itself():
    queue = KeyQueue(size=3, dim=2)
    keys = torch.randn(7, 2)
    queue.enqueue(keys)
    assert torch.allclose(torch.sort(queue.keys(), dim=0).values,
                          torch.sort(torch.nn.functional.normalize(keys[-3:], dim=1), dim=0).values)


def test_ema_update_equals_formula_and_copy_gets_no_gradient():
    torch.manual_seed(0)
    online = nn.Linear(3, 2)
    target = MomentumEncoder(online)
    with torch.no_grad():
        online.weight.add_(1.0)
    before = target.network[0].weight.clone()
    target.update(online, momentum=0.9)
    assert torch.allclose(target.network[0].weight, 0.9 * before + 0.1 * online.weight.detach())
    out = online(torch.randn(4, 3)).sum() + target(torch.randn(4, 3)).sum()
    out.backward()
    assert all(p.grad is None and not p.requires_grad for p in target.parameters())


def test_cosine_momentum_schedule():
    assert momentum_at(0.99, 0.0, "cosine") == pytest.approx(0.99)
    assert momentum_at(0.99, 0.5, "cosine") == pytest.approx(0.995)
    assert momentum_at(0.99, 1.0, "cosine") == pytest.approx(1.0)
    assert momentum_at(0.99, 0.7, "constant") == 0.99


def test_split_batch_norm_uses_group_statistics_and_keeps_order():
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(3, affine=False)
    x = torch.randn(8, 3) * torch.arange(1, 9).unsqueeze(1)
    grouped = forward_in_groups(bn, x, groups=2, shuffle=False)
    by_hand = torch.cat([(c - c.mean(0)) / torch.sqrt(c.var(0, unbiased=False) + bn.eps) for c in x.chunk(2)])
    assert torch.allclose(grouped, by_hand, atol=1e-5)
    # Shuffled groups: a row-wise function comes back in the input's order.
    assert torch.equal(forward_in_groups(lambda t: t * 2, x, groups=4, shuffle=True), x * 2)
    with pytest.raises(ValueError, match="cannot be split"):
        forward_in_groups(bn, x, groups=5, shuffle=False)


def test_stop_gradient_losses_send_nothing_to_the_target():
    torch.manual_seed(1)
    p, z = torch.randn(6, 4, requires_grad=True), torch.randn(6, 4, requires_grad=True)
    for loss_fn in (negative_cosine, normalized_mse):
        p.grad = z.grad = None
        loss_fn(p, z).backward()
        assert z.grad is None and p.grad.abs().sum() > 0


def test_simsiam_and_byol_losses_equal_their_formulas():
    torch.manual_seed(2)
    p, z = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    cos = (p * z).sum(1) / (p.norm(dim=1) * z.norm(dim=1))
    assert negative_cosine(p, z).item() == pytest.approx(float(-cos.mean()), rel=1e-6)
    assert normalized_mse(p, z).item() == pytest.approx(float((2 - 2 * cos).mean()), rel=1e-6)


def test_mlp_head_without_hidden_batch_norm():
    head = MLPHead(4, 8, 2, hidden_bn=False)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in head)
    assert head(torch.randn(1, 4)).shape == (1, 2)  # works for a single sample
