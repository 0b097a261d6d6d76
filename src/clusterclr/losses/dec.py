r"""Deep Embedded Clustering (Xie et al., 2016) losses, and the anchor loss of the centre predictor.

Soft assignment of feature :math:`h_i` to centre :math:`\mu_j` by a
Student-t kernel with :math:`\alpha` degrees of freedom:

.. math::

    q_{ij} = \frac{(1 + \lVert h_i - \mu_j \rVert^2 / \alpha)^{-\frac{\alpha+1}{2}}}
                  {\sum_{j'} (1 + \lVert h_i - \mu_{j'} \rVert^2 / \alpha)^{-\frac{\alpha+1}{2}}}

The sharpened target squares the assignments and divides by the soft
cluster frequency :math:`f_j = \sum_i q_{ij}`, so confident assignments
are reinforced and large clusters cannot swallow the rest:

.. math::

    p_{ij} = \frac{q_{ij}^2 / f_j}{\sum_{j'} q_{ij'}^2 / f_{j'}}

The clustering loss is :math:`\mathrm{KL}(P \Vert Q)` with :math:`P`
detached. The centre predictor (Sundareswaran et al., 2021) adds an anchor
loss :math:`\mathrm{KL}(q(x) \Vert q(\tilde x))`: an augmented view's
assignment must match the clean image's, which is the (detached) target.

Everything is computed in fp32: the squared distances of wide features
overflow bf16's mantissa long before they overflow its range.
"""

from __future__ import annotations

import torch


def student_t_assignment(features: torch.Tensor, centres: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Soft assignments q (N × K) of ``features`` (N × D) to ``centres`` (K × D); rows sum to 1."""
    with torch.autocast(features.device.type, enabled=False):
        squared = torch.cdist(features.float(), centres.float()).square()
        # Normalised in log space: the unnormalised kernel underflows for far-away centres.
        log_kernel = -(alpha + 1) / 2 * torch.log1p(squared / alpha)
        return torch.softmax(log_kernel, dim=1)


@torch.no_grad()
def sharpened_target(q: torch.Tensor, frequency: torch.Tensor | None = None) -> torch.Tensor:
    """DEC's target distribution P from assignments ``q`` (N × K); detached.

    ``frequency`` (K): the soft cluster frequencies f, by default ``q``'s
    column sums; a distributed run passes those of the global batch.
    """
    frequency = q.float().sum(dim=0) if frequency is None else frequency.float()
    weight = q.float().square() / frequency
    return weight / weight.sum(dim=1, keepdim=True)


def kl_divergence(target: torch.Tensor, predicted: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Mean over rows of KL(target ‖ predicted) for row-stochastic N × K matrices.

    Gradients flow into ``predicted`` only: the target is a fixed distribution.
    """
    target = target.detach().float()
    predicted = predicted.float()
    terms = target * (torch.log(target.clamp_min(eps)) - torch.log(predicted.clamp_min(eps)))
    return terms.sum(dim=1).mean()


def clustering_loss(q_clean: torch.Tensor, frequency: torch.Tensor | None = None) -> torch.Tensor:
    """KL(P ‖ Q) on the clean view's assignments, P the sharpened target of Q (``frequency`` as there)."""
    return kl_divergence(sharpened_target(q_clean, frequency), q_clean)


def anchor_loss(q_clean: torch.Tensor, q_augmented: list[torch.Tensor]) -> torch.Tensor:
    """Sum over augmented views of KL(q(clean) ‖ q(view)), the clean assignment held fixed."""
    return torch.stack([kl_divergence(q_clean, q) for q in q_augmented]).sum()
