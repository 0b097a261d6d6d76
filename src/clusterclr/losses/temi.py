r"""TEMI's weighted pointwise mutual information (Adaloglou et al., BMVC 2023).

Cluster heads on frozen features, trained by self-distillation: a student
head :math:`s` and a teacher head :math:`t` whose weights are an
exponential moving average (EMA) of the student's. For an image :math:`x`
and one of its mined nearest neighbours :math:`x'`, with temperatures
:math:`\tau_s, \tau_t`,

.. math::

    q_s(c \mid x) = \mathrm{softmax}_c\big(s(x) / \tau_s\big), \qquad
    q_t(c \mid x) = \mathrm{softmax}_c\big(t(x) / \tau_t\big).

If :math:`x` and :math:`x'` are two draws of one cluster, their pointwise
mutual information is :math:`\log \sum_c q(c \mid x)\, q(c \mid x') / q(c)`
with :math:`q(c)` the cluster marginal. TEMI raises the joint to a power
:math:`\beta \in (0, 1]` (0.6 in the paper), which keeps the optimum from
over-rewarding confident pairs and so resists one cluster taking all:

.. math::

    \mathrm{pmi}^\beta(x, x') = \log \sum_{c=1}^{K}
        \frac{\big(q_s(c \mid x)\, q_t(c \mid x')\big)^\beta}{\tilde q_t(c)}

where :math:`\tilde q_t` estimates the marginal by an EMA (momentum
:math:`m`, 0.9) of the teacher's mean prediction over each batch (anchors
and neighbours together), updated *before* the batch's loss is computed.
Mined neighbours are sometimes of another class; TEMI weighs each pair by
how much the teacher heads agree on it, averaged over the :math:`H` heads
and held fixed (no gradient):

.. math::

    w(x, x') = \frac{1}{H} \sum_{h=1}^{H} \sum_{c=1}^{K} q^h_t(c \mid x)\, q^h_t(c \mid x').

Each head's loss is symmetric in the pair and averaged over the batch:

.. math::

    \mathcal{L}^h = -\frac{1}{2B} \sum_{i=1}^{B} w(x_i, x'_i)
        \big(\mathrm{pmi}^\beta_h(x_i, x'_i) + \mathrm{pmi}^\beta_h(x'_i, x_i)\big)

(:math:`\mathrm{pmi}_h(x', x)` is the student on the neighbour against the
teacher on the anchor). The teacher gets no gradient. The sum inside the
log is computed as a log-sum-exp of
:math:`\beta(\log q_s + \log q_t) - \log \tilde q_t`, so it stays finite
however sharp the predictions are.

Logits carry the heads as the leading dimension: (H, B, K).
"""

from __future__ import annotations

import torch


def teacher_probabilities(teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """q_t = softmax(t(x) / τ_t), detached: the teacher is never trained by the loss."""
    return (_at_least_fp32(teacher_logits.detach()) / temperature).softmax(-1)


@torch.no_grad()
def updated_marginal(marginal: torch.Tensor, teacher_probs: torch.Tensor, momentum: float = 0.9) -> torch.Tensor:
    """The EMA estimate q̃_t (H × K) moved towards the mean of ``teacher_probs`` (H × N × K)."""
    return momentum * marginal + (1 - momentum) * _at_least_fp32(teacher_probs).mean(-2)


@torch.no_grad()
def pair_weights(teacher_anchors: torch.Tensor, teacher_neighbours: torch.Tensor) -> torch.Tensor:
    """w(x, x'): the teacher heads' agreement ⟨q_t(x), q_t(x')⟩ on each pair, averaged over heads; (H, B, K) → (B,)."""
    return (_at_least_fp32(teacher_anchors) * teacher_neighbours).sum(-1).mean(0)


def weighted_pmi(student_logits: torch.Tensor, teacher_probs: torch.Tensor, marginal: torch.Tensor, beta: float, temperature: float) -> torch.Tensor:
    """pmi^β(x, x') per head and pair, (H, B): the student's logits on x, the teacher's probabilities on x'."""
    tiny = torch.finfo(torch.float32).tiny
    log_student = (_at_least_fp32(student_logits) / temperature).log_softmax(-1)
    log_teacher = _at_least_fp32(teacher_probs).clamp_min(tiny).log()
    log_marginal = _at_least_fp32(marginal).clamp_min(tiny).log().unsqueeze(-2)
    return (beta * (log_student + log_teacher) - log_marginal).logsumexp(-1)


def temi_loss(
    student_anchors: torch.Tensor,
    student_neighbours: torch.Tensor,
    teacher_anchors: torch.Tensor,
    teacher_neighbours: torch.Tensor,
    marginal: torch.Tensor,
    beta: float = 0.6,
    student_temperature: float = 0.1,
) -> torch.Tensor:
    """TEMI's per-head loss (H,) of one batch of (anchor, neighbour) pairs.

    ``student_*``: the student's logits, (H, B, K); ``teacher_*``: the
    teacher's probabilities (:func:`teacher_probabilities`), (H, B, K);
    ``marginal``: q̃_t, (H, K), already updated with this batch.
    """
    if not student_anchors.shape == student_neighbours.shape == teacher_anchors.shape == teacher_neighbours.shape:
        raise ValueError("the student's and the teacher's anchors and neighbours must all have one shape (H, B, K)")
    weights = pair_weights(teacher_anchors, teacher_neighbours)
    forward = weighted_pmi(student_anchors, teacher_neighbours, marginal, beta, student_temperature)
    backward = weighted_pmi(student_neighbours, teacher_anchors, marginal, beta, student_temperature)
    return -(weights * (forward + backward)).mean(-1) / 2


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 in fp32 (logs of small probabilities need the range); fp32 and fp64 unchanged."""
    return x.to(torch.promote_types(x.dtype, torch.float32))
