"""DEC, the centre predictor's anchor loss and Contrastive Clustering's cluster loss."""

import numpy as np
import pytest
import torch

from clusterclr.clustering.metrics import cluster_accuracy
from clusterclr.losses.cluster_contrast import cluster_contrast, marginal_entropy_gap
from clusterclr.losses.dec import (
    anchor_loss,
    clustering_loss,
    sharpened_target,
    student_t_assignment,
)
from clusterclr.models.cluster_heads import SoftmaxClusterHead, StudentTCentres


def reference_student_t(h, mu, alpha):
    h, mu = np.asarray(h, np.float64), np.asarray(mu, np.float64)
    squared = ((h[:, None, :] - mu[None, :, :]) ** 2).sum(-1)
    kernel = (1 + squared / alpha) ** (-(alpha + 1) / 2)
    return kernel / kernel.sum(1, keepdims=True)


def reference_target(q):
    weight = q**2 / q.sum(0)
    return weight / weight.sum(1, keepdims=True)


def reference_kl(p, q):
    return float((p * np.log(p / q)).sum(1).mean())


@pytest.mark.parametrize("alpha", [1.0, 2.5])
def test_student_t_assignment_and_target_match_float64_reference(alpha):
    g = torch.Generator().manual_seed(0)
    h, mu = torch.randn(9, 5, generator=g) * 2, torch.randn(4, 5, generator=g) * 2
    q = student_t_assignment(h, mu, alpha)
    expected_q = reference_student_t(h, mu, alpha)
    np.testing.assert_allclose(q.numpy(), expected_q, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(sharpened_target(q).numpy(), reference_target(expected_q), rtol=1e-5, atol=1e-7)
    assert clustering_loss(q).item() == pytest.approx(reference_kl(reference_target(expected_q), expected_q), rel=1e-5)


def test_student_t_assignment_survives_far_away_centres():
    q = student_t_assignment(torch.tensor([[0.0, 0.0]]), torch.tensor([[1e4, 0.0], [2e4, 0.0]]))
    assert torch.isfinite(q).all() and q[0, 0] > q[0, 1]


def test_clustering_loss_treats_its_target_as_fixed():
    g = torch.Generator().manual_seed(1)
    q = torch.softmax(torch.randn(6, 3, generator=g), 1).requires_grad_()
    clustering_loss(q).backward()
    # d/dq KL(P‖Q) with P held fixed is -P/Q/N; a gradient through P would add more terms.
    p = reference_target(q.detach().double().numpy())
    np.testing.assert_allclose(q.grad.numpy(), -p / q.detach().double().numpy() / 6, rtol=1e-5)


def test_anchor_loss_sends_no_gradient_through_the_clean_target():
    g = torch.Generator().manual_seed(2)
    mu = torch.randn(3, 4, generator=g)
    clean = torch.randn(5, 4, generator=g, requires_grad=True)
    views = [torch.randn(5, 4, generator=g, requires_grad=True) for _ in range(2)]
    q_clean = student_t_assignment(clean, mu)
    loss = anchor_loss(q_clean, [student_t_assignment(v, mu) for v in views])
    loss.backward()
    assert clean.grad is None
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in views)
    expected_q = reference_student_t(clean.detach(), mu, 1.0)
    expected = sum(reference_kl(expected_q, reference_student_t(v.detach(), mu, 1.0)) for v in views)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def reference_cluster_contrast(a, b, temperature):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    k = a.shape[1]
    columns = np.concatenate([a.T, b.T])
    columns /= np.linalg.norm(columns, axis=1, keepdims=True)
    logits = columns @ columns.T / temperature
    total = 0.0
    for i in range(2 * k):
        positive = (i + k) % (2 * k)
        others = [j for j in range(2 * k) if j != i]
        total += -(logits[i, positive] - np.log(np.exp(logits[i, others]).sum()))
    entropy_gap = 0.0
    for y in (a, b):
        marginal = y.sum(0) / y.sum()
        entropy_gap += np.log(k) + (marginal * np.log(marginal)).sum()
    return total / (2 * k) + entropy_gap


@pytest.mark.parametrize(("batch", "clusters", "temperature"), [(7, 3, 1.0), (13, 5, 0.5), (1, 4, 1.0)])
def test_cluster_contrast_matches_reference_for_any_batch_size(batch, clusters, temperature):
    g = torch.Generator().manual_seed(batch)
    a = torch.softmax(torch.randn(batch, clusters, generator=g), 1)
    b = torch.softmax(torch.randn(batch, clusters, generator=g), 1)
    assert cluster_contrast(a, b, temperature).item() == pytest.approx(reference_cluster_contrast(a, b, temperature), rel=1e-5)


def test_entropy_gap_is_zero_for_even_use_and_log_k_for_one_cluster():
    assert marginal_entropy_gap(torch.full((6, 3), 1 / 3)).item() == pytest.approx(0.0, abs=1e-6)
    assert marginal_entropy_gap(torch.eye(3)[[0, 0, 0, 0]]).item() == pytest.approx(np.log(3), rel=1e-5)


def test_cluster_contrast_rejects_mismatched_views():
    with pytest.raises(ValueError, match="differ in shape"):
        cluster_contrast(torch.rand(4, 3), torch.rand(5, 3))


def blobs(n_per_blob=60, blobs=4, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(blobs, dim, generator=g) * 6
    labels = torch.arange(blobs).repeat_interleave(n_per_blob)
    return means[labels] + torch.randn(len(labels), dim, generator=g) * 0.5, labels, means


def test_cc_cluster_loss_recovers_blobs_from_a_random_head():
    x, labels, _ = blobs()
    torch.manual_seed(0)
    head = SoftmaxClusterHead(8, 32, 4)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(200):
        first, second = (x + torch.randn(x.shape, generator=g) * 0.3 for _ in range(2))
        loss = cluster_contrast(head(first), head(second))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = head(x).argmax(1)
    assert cluster_accuracy(labels.numpy(), predicted.numpy()) > 0.99


def test_dec_losses_pull_perturbed_centres_onto_the_blobs():
    x, labels, means = blobs()
    g = torch.Generator().manual_seed(2)
    centres = StudentTCentres(4, 8)
    centres.initialise(means + torch.randn(means.shape, generator=g) * 2.5)
    start = (centres.centres.detach() - means).norm(dim=1).mean()
    optimizer = torch.optim.Adam(centres.parameters(), lr=5e-2)
    for _ in range(300):
        q_clean = centres(x)
        noisy = [x + torch.randn(x.shape, generator=g) * 0.3 for _ in range(2)]
        loss = clustering_loss(q_clean) + anchor_loss(q_clean, [centres(v) for v in noisy])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = centres(x).argmax(1)
    assert cluster_accuracy(labels.numpy(), predicted.numpy()) > 0.99
    assert (centres.centres.detach() - means).norm(dim=1).mean() < start / 2
