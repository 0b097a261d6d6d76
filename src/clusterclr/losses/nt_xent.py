r"""NT-Xent (SimCLR) with an arbitrary positive mask.

For L2-normalised embeddings :math:`z_1 \dots z_M` (all views of a batch)
and a boolean positive mask :math:`P`, the loss of anchor :math:`a` is

.. math::

    \ell_a = -\frac{1}{|P_a|} \sum_{p \in P_a}
             \log \frac{\exp(z_a \cdot z_p / \tau)}
                       {\sum_{b \ne a} \exp(z_a \cdot z_b / \tau)}

and the loss is the mean over anchors that have at least one positive.
With SimCLR's mask (the other view of the same image, one positive per
anchor) this is exactly NT-Xent over the :math:`2N` views (Chen et al.,
2020). With more than one positive per anchor it is the multi-positive
form (Khosla et al., 2020, :math:`\mathcal{L}^{sup}_{out}`), which is how
semantic and cluster positives enter the same loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(embeddings: torch.Tensor, positives: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent of ``embeddings`` (M × D, normalised here) under ``positives`` (M × M bool)."""
    if positives.shape != (embeddings.shape[0],) * 2:
        raise ValueError(f"positives must be {embeddings.shape[0]}×{embeddings.shape[0]}, got {tuple(positives.shape)}")
    # In fp32 even under autocast: bf16 logits blur the small similarity gaps the loss ranks.
    with torch.autocast(embeddings.device.type, enabled=False):
        z = F.normalize(embeddings.float(), dim=1)
        logits = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    # A view is never its own negative: drop the diagonal from the denominator.
    log_prob = logits - torch.logsumexp(logits.masked_fill(self_mask, float("-inf")), dim=1, keepdim=True)
    positives = positives & ~self_mask
    num_positives = positives.sum(1)
    has_positive = num_positives > 0
    per_anchor = (log_prob * positives).sum(1)[has_positive] / num_positives[has_positive]
    return -per_anchor.mean()
