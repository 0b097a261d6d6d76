r"""SCAN's clustering loss and its self-labelling loss (Van Gansbeke et al., ECCV 2020).

**Clustering.** A softmax head :math:`\Phi` maps an image :math:`x` to
cluster probabilities :math:`p(x) \in \Delta^K`. Its mined nearest
neighbours :math:`n \in \mathcal{N}_k(x)` probably show the same kind of
thing, so the head is asked to give them the same, confident answer: the
dot product :math:`\langle p(x), p(n) \rangle` is 1 only when both put all
their mass on one cluster. Training draws one neighbour per anchor, and on
a batch of :math:`B` (anchor, neighbour) pairs

.. math::

    \mathcal{L}_{SCAN} = -\frac{1}{B} \sum_{i=1}^{B} \log \langle p(x_i), p(n_i) \rangle
        \;-\; \lambda\, H(\bar p),
    \qquad \bar p = \frac{1}{B} \sum_{i=1}^{B} p(x_i),
    \qquad H(\bar p) = -\sum_{c=1}^{K} \bar p_c \log \bar p_c .

The consistency term alone is solved by one giant cluster; the entropy of
the mean prediction :math:`\bar p` (over the anchors) is largest when the
clusters are used evenly, and :math:`\lambda` (5 in the paper for
CIFAR-10) weighs the two. Gradients flow through both the anchor and the
neighbour, as in the paper. The log of the dot product is computed from
the logits, :math:`\log \langle \mathrm{softmax}(a), \mathrm{softmax}(b) \rangle
= \operatorname{lse}(a + b) - \operatorname{lse}(a) - \operatorname{lse}(b)`,
so it stays finite when the two predictions barely overlap.

**Self-labelling.** Once the clusters are good, images the head is sure of
(:math:`\max_c p_c(x) > t`, :math:`t = 0.99`) become labelled examples,
:math:`y = \arg\max_c p_c(x)`, and the head is trained on them with a
cross-entropy that weighs each pseudo-class by the inverse of its share of
the confident images of the batch, so that the clusters with many
confident members do not grow at the expense of the rest. Over the set
:math:`C` of confident images, with :math:`m_c` of them labelled
:math:`c` and :math:`w_c = |C| / m_c`,

.. math::

    \mathcal{L}_{self} = \frac{\sum_{i \in C} w_{y_i}\,\big(-\log q_{y_i}(x_i)\big)}
                              {\sum_{i \in C} w_{y_i}}

where :math:`q` is the prediction being trained. In the paper the labels
come from a weakly augmented view and :math:`q` from a strongly augmented
one; without views (frozen features) both come from the same input. The
normalisation makes this the mean, over the pseudo-classes present, of
each class's mean cross-entropy. With no confident image the loss is zero.

Both losses accept any number of leading dimensions (heads): logits of
shape (..., B, K) give one loss per head, shape (...).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class ScanLoss(NamedTuple):
    """Per-head ``total`` = ``consistency`` − λ·``entropy``; each of the logits' leading shape."""

    total: torch.Tensor
    consistency: torch.Tensor
    entropy: torch.Tensor


class SelfLabelLoss(NamedTuple):
    """Per-head ``loss`` and ``confident`` fraction of the batch, each of the logits' leading shape."""

    loss: torch.Tensor
    confident: torch.Tensor


def log_agreement(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """log ⟨softmax(first), softmax(second)⟩ along the last dimension, computed stably from logits."""
    return (first + second).logsumexp(-1) - first.logsumexp(-1) - second.logsumexp(-1)


def entropy(distribution: torch.Tensor) -> torch.Tensor:
    """H(p) = −Σ_c p_c log p_c along the last dimension (0 log 0 = 0)."""
    return -(distribution * distribution.clamp_min(torch.finfo(distribution.dtype).tiny).log()).sum(-1)


def mean_prediction_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H(mean over the batch of softmax(logits)); logits (..., B, K) → (...)."""
    return entropy(logits.softmax(-1).mean(-2))


def scan_loss(anchors: torch.Tensor, neighbours: torch.Tensor, entropy_weight: float = 5.0) -> ScanLoss:
    """SCAN's loss of anchors' and their neighbours' logits, each (..., B, K)."""
    if anchors.shape != neighbours.shape:
        raise ValueError(f"anchors and neighbours differ in shape: {tuple(anchors.shape)} vs {tuple(neighbours.shape)}")
    anchors, neighbours = _at_least_fp32(anchors), _at_least_fp32(neighbours)
    consistency = -log_agreement(anchors, neighbours).mean(-1)
    entropy = mean_prediction_entropy(anchors)
    return ScanLoss(consistency - entropy_weight * entropy, consistency, entropy)


def self_label_loss(logits: torch.Tensor, labelling_logits: torch.Tensor | None = None, threshold: float = 0.99) -> SelfLabelLoss:
    """Class-balanced cross-entropy of ``logits`` (..., B, K) on the confident pseudo-labels of ``labelling_logits``.

    ``labelling_logits`` (default: ``logits``) give the labels and the
    confidence, without gradient; in the end-to-end mode they are the
    weakly augmented view's and ``logits`` the strongly augmented one's.
    """
    labelling_logits = logits if labelling_logits is None else labelling_logits
    if labelling_logits.shape != logits.shape:
        raise ValueError(f"labelling logits of shape {tuple(labelling_logits.shape)} for logits of shape {tuple(logits.shape)}")
    logits = _at_least_fp32(logits)
    with torch.no_grad():
        confidence, labels = _at_least_fp32(labelling_logits).softmax(-1).max(-1)
        confident = (confidence > threshold).to(logits.dtype)
        # m_c per head: how many confident images carry each label; w_c = 1 / m_c (the |C| cancels).
        counts = torch.zeros_like(logits).scatter_add_(-1, labels.unsqueeze(-1), confident.unsqueeze(-1)).sum(-2)
        weights = confident / counts.gather(-1, labels).clamp_min(1)
    cross_entropy = -logits.log_softmax(-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    # Σ w = number of pseudo-classes present; with none, the loss is 0 · (a graph that still backpropagates).
    loss = (weights * cross_entropy).sum(-1) / weights.sum(-1).clamp_min(1)
    return SelfLabelLoss(loss, confident.mean(-1))


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 logits in fp32 (softmax sums lose too much in half precision); fp32 and fp64 unchanged."""
    return x.to(torch.promote_types(x.dtype, torch.float32))
