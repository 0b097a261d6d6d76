"""SCAN's clustering and self-labelling losses and TEMI's weighted PMI, against plain float64 loops."""

import math

import numpy as np
import pytest
import torch

from clusterclr.losses.scan import scan_loss, self_label_loss
from clusterclr.losses.temi import (
    pair_weights,
    teacher_probabilities,
    temi_loss,
    updated_marginal,
)


def softmax(row):
    e = [math.exp(v - max(row)) for v in row]
    return [v / sum(e) for v in e]


def reference_scan(anchors, neighbours, entropy_weight):
    """One head: anchors, neighbours B × K nested lists of logits."""
    p = [softmax(r) for r in anchors]
    q = [softmax(r) for r in neighbours]
    b, k = len(p), len(p[0])
    consistency = -sum(math.log(sum(p[i][c] * q[i][c] for c in range(k))) for i in range(b)) / b
    mean = [sum(p[i][c] for i in range(b)) / b for c in range(k)]
    entropy = -sum(m * math.log(m) for m in mean)
    return consistency - entropy_weight * entropy, consistency, entropy


def reference_self_label(logits, labelling, threshold):
    """One head: the class-balanced cross-entropy written out, weights |C| / m_c."""
    probs = [softmax(r) for r in labelling]
    confident = [i for i, p in enumerate(probs) if max(p) > threshold]
    labels = {i: probs[i].index(max(probs[i])) for i in confident}
    counts = {}
    for i in confident:
        counts[labels[i]] = counts.get(labels[i], 0) + 1
    weight = {c: len(confident) / m for c, m in counts.items()}
    numerator = sum(weight[labels[i]] * -math.log(softmax(logits[i])[labels[i]]) for i in confident)
    denominator = sum(weight[labels[i]] for i in confident)
    return (numerator / denominator if confident else 0.0), len(confident) / len(logits)


def reference_temi(student_a, student_n, teacher_a, teacher_n, marginal, beta, tau_s, tau_t):
    """All heads: H × B × K nested lists of logits; marginal H × K; returns the H losses."""
    heads, b, k = len(student_a), len(student_a[0]), len(student_a[0][0])
    s_a = [[softmax([v / tau_s for v in r]) for r in h] for h in student_a]
    s_n = [[softmax([v / tau_s for v in r]) for r in h] for h in student_n]
    t_a = [[softmax([v / tau_t for v in r]) for r in h] for h in teacher_a]
    t_n = [[softmax([v / tau_t for v in r]) for r in h] for h in teacher_n]
    weight = [sum(sum(t_a[h][i][c] * t_n[h][i][c] for c in range(k)) for h in range(heads)) / heads for i in range(b)]

    def pmi(h, s, t, i):
        return math.log(sum((s[h][i][c] * t[h][i][c]) ** beta / marginal[h][c] for c in range(k)))

    return [
        -sum(weight[i] * (pmi(h, s_a, t_n, i) + pmi(h, s_n, t_a, i)) for i in range(b)) / (2 * b)
        for h in range(heads)
    ]


def random_logits(*shape, seed, scale=2.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


@pytest.mark.parametrize("entropy_weight", [0.0, 5.0])
def test_scan_loss_matches_float64_loops_for_every_head(entropy_weight):
    anchors, neighbours = random_logits(3, 7, 4, seed=0), random_logits(3, 7, 4, seed=1)
    loss = scan_loss(anchors, neighbours, entropy_weight)
    for h in range(3):
        total, consistency, entropy = reference_scan(anchors[h].tolist(), neighbours[h].tolist(), entropy_weight)
        assert loss.total[h].item() == pytest.approx(total, abs=1e-10)
        assert loss.consistency[h].item() == pytest.approx(consistency, abs=1e-10)
        assert loss.entropy[h].item() == pytest.approx(entropy, abs=1e-10)


def test_scan_loss_in_float32_agrees_and_survives_disjoint_predictions():
    anchors, neighbours = random_logits(5, 3, seed=2), random_logits(5, 3, seed=3)
    expected = reference_scan(anchors.tolist(), neighbours.tolist(), 5.0)[0]
    assert scan_loss(anchors.float(), neighbours.float()).total.item() == pytest.approx(expected, abs=1e-6)
    # Confident and disagreeing: the dot product underflows float32, its log from the logits does not.
    far = scan_loss(torch.tensor([[200.0, 0.0]]), torch.tensor([[0.0, 200.0]]), 0.0).total
    assert far.item() == pytest.approx(200 - math.log(2), rel=1e-6)  # ⟨p, q⟩ = 2 e^200 / (e^200 + 1)^2


def test_scan_loss_is_lowest_for_confident_agreeing_and_balanced_predictions():
    confident = torch.eye(4).repeat(2, 1) * 20
    one_cluster = torch.tensor([[20.0, 0, 0, 0]]).repeat(8, 1)
    balanced = scan_loss(confident, confident).total
    collapsed = scan_loss(one_cluster, one_cluster).total
    disagreeing = scan_loss(confident, confident.roll(1, dims=1)).total
    assert balanced.item() == pytest.approx(-5 * math.log(4), abs=1e-5)
    assert collapsed.item() == pytest.approx(0, abs=1e-5)
    # Each pair puts its mass on neighbouring clusters: ⟨p, q⟩ ≈ 2 e^-20, the entropy is still log 4.
    assert disagreeing.item() == pytest.approx(20 - math.log(2) - 5 * math.log(4), abs=1e-5)


def test_scan_loss_sends_gradient_to_anchors_and_neighbours():
    anchors, neighbours = random_logits(4, 3, seed=4).requires_grad_(), random_logits(4, 3, seed=5).requires_grad_()
    scan_loss(anchors, neighbours).total.backward()
    assert anchors.grad.abs().sum() > 0 and neighbours.grad.abs().sum() > 0


def confident_batch(seed):
    """Logits of 2 heads × 9 images × 3 clusters, some rows scaled so their softmax passes 0.99."""
    logits = random_logits(2, 9, 3, seed=seed)
    logits[:, :6] *= 8
    return logits


@pytest.mark.parametrize("threshold", [0.9, 0.99])
def test_self_label_loss_matches_float64_loops(threshold):
    labelling, logits = confident_batch(6), random_logits(2, 9, 3, seed=7)
    loss = self_label_loss(logits, labelling, threshold)
    for h in range(2):
        expected, fraction = reference_self_label(logits[h].tolist(), labelling[h].tolist(), threshold)
        assert fraction > 0
        assert loss.loss[h].item() == pytest.approx(expected, abs=1e-10)
        assert loss.confident[h].item() == pytest.approx(fraction)


def test_self_label_loss_weighs_rare_pseudo_classes_up():
    # Three confident images labelled 0, one labelled 1: each class counts as much as the other.
    labelling = torch.tensor([[20.0, 0], [20, 0], [20, 0], [0, 20]], dtype=torch.float64)
    logits = torch.tensor([[1.0, 0], [1, 0], [1, 0], [0, 3]], dtype=torch.float64)
    ce_0, ce_1 = math.log(1 + math.exp(-1)), math.log(1 + math.exp(-3))
    assert self_label_loss(logits, labelling).loss.item() == pytest.approx((ce_0 + ce_1) / 2, abs=1e-12)


def test_self_label_loss_without_confident_images_is_zero_and_labels_carry_no_gradient():
    logits = random_logits(6, 4, seed=8, scale=0.1).requires_grad_()
    out = self_label_loss(logits)
    assert out.loss.item() == 0 and out.confident.item() == 0
    out.loss.backward()  # still a graph: a batch without confident images is not an error
    labelling = confident_batch(9)[0].requires_grad_()
    logits = random_logits(9, 3, seed=10).requires_grad_()
    self_label_loss(logits, labelling).loss.backward()
    assert labelling.grad is None and logits.grad.abs().sum() > 0


def test_temi_loss_matches_float64_loops():
    heads, b, k = 3, 5, 4
    student_a, student_n = random_logits(heads, b, k, seed=11), random_logits(heads, b, k, seed=12)
    teacher_a, teacher_n = random_logits(heads, b, k, seed=13), random_logits(heads, b, k, seed=14)
    marginal = torch.softmax(random_logits(heads, k, seed=15, scale=0.5), -1)
    beta, tau_s, tau_t = 0.6, 0.7, 0.4
    losses = temi_loss(
        student_a, student_n, teacher_probabilities(teacher_a, tau_t), teacher_probabilities(teacher_n, tau_t), marginal, beta, tau_s
    )
    expected = reference_temi(
        student_a.tolist(), student_n.tolist(), teacher_a.tolist(), teacher_n.tolist(), marginal.tolist(), beta, tau_s, tau_t
    )
    np.testing.assert_allclose(losses.numpy(), expected, rtol=0, atol=1e-10)


def test_temi_marginal_and_weights_match_their_definitions():
    probs = torch.softmax(random_logits(2, 6, 3, seed=16), -1)
    marginal = torch.full((2, 3), 1 / 3, dtype=torch.float64)
    moved = updated_marginal(marginal, probs, momentum=0.9)
    for h in range(2):
        for c in range(3):
            assert moved[h, c].item() == pytest.approx(0.9 / 3 + 0.1 * sum(probs[h, i, c].item() for i in range(6)) / 6, abs=1e-12)
    other = torch.softmax(random_logits(2, 6, 3, seed=17), -1)
    weights = pair_weights(probs, other)
    for i in range(6):
        expected = sum(sum(probs[h, i, c].item() * other[h, i, c].item() for c in range(3)) for h in range(2)) / 2
        assert weights[i].item() == pytest.approx(expected, abs=1e-12)


def test_temi_loss_trains_the_student_only():
    student_a, student_n = random_logits(2, 4, 3, seed=18).requires_grad_(), random_logits(2, 4, 3, seed=19).requires_grad_()
    teacher_a, teacher_n = random_logits(2, 4, 3, seed=20).requires_grad_(), random_logits(2, 4, 3, seed=21).requires_grad_()
    marginal = torch.full((2, 3), 1 / 3, dtype=torch.float64)
    loss = temi_loss(student_a, student_n, teacher_probabilities(teacher_a, 0.1), teacher_probabilities(teacher_n, 0.1), marginal)
    loss.sum().backward()
    assert student_a.grad.abs().sum() > 0 and student_n.grad.abs().sum() > 0
    assert teacher_a.grad is None and teacher_n.grad is None


def test_temi_loss_prefers_agreeing_pairs_spread_over_clusters():
    # Confident, agreeing pairs over a uniform marginal reach -log K; a pair split across clusters gets
    # no credit (the teacher's agreement, its weight, vanishes).
    eye = torch.eye(3, dtype=torch.float64)[None] * 50
    marginal = torch.full((1, 3), 1 / 3, dtype=torch.float64)
    agree = temi_loss(eye, eye, teacher_probabilities(eye, 1.0), teacher_probabilities(eye, 1.0), marginal, beta=0.6, student_temperature=1.0)
    split = temi_loss(
        eye, eye.roll(1, -1), teacher_probabilities(eye, 1.0), teacher_probabilities(eye.roll(1, -1), 1.0), marginal, 0.6, 1.0
    )
    assert agree.item() == pytest.approx(-math.log(3), abs=1e-9)
    assert split.item() == pytest.approx(0, abs=1e-9)
