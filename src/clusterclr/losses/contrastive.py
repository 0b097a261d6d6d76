r"""Multi-positive InfoNCE: anchors against candidates under a positive mask.

For L2-normalised anchors :math:`a_i`, candidates :math:`c_j`, a boolean
positive mask :math:`P` and a mask :math:`E` of pairs left out entirely
(e.g. a view paired with itself), the loss of anchor :math:`i` is

.. math::

    \ell_i = -\frac{1}{|P_i|} \sum_{j \in P_i}
             \log \frac{\exp(a_i \cdot c_j / \tau)}
                       {\sum_{k \notin E_i} \exp(a_i \cdot c_k / \tau)}

averaged over the anchors that have at least one positive. Every
contrastive method here is this loss with a different mask:

- SimCLR's NT-Xent (Chen et al., 2020): anchors = candidates = all 2N views,
  :math:`E` the diagonal, :math:`P` the other view of the same image.
- MoCo's InfoNCE (He et al., 2020): anchors = queries, candidates = the
  batch's keys followed by the queue, :math:`P` each query's own key.
- More than one positive per anchor (semantic partners, cluster mates) is
  the multi-positive form of Khosla et al. (2020), :math:`\mathcal{L}^{sup}_{out}`.

The similarities are computed in fp32 even under autocast: bf16 logits blur
the small similarity gaps the loss ranks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    positives: torch.Tensor,
    temperature: float,
    excluded: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean multi-positive InfoNCE of ``anchors`` (A × D) over ``candidates`` (C × D).

    ``positives`` and ``excluded`` are A × C boolean masks; excluded pairs
    are neither positives nor negatives.
    """
    shape = (anchors.shape[0], candidates.shape[0])
    if positives.shape != shape or (excluded is not None and excluded.shape != shape):
        raise ValueError(f"masks must be {shape[0]}×{shape[1]}, got {tuple(positives.shape)}")
    with torch.autocast(anchors.device.type, enabled=False):
        logits = F.normalize(anchors.float(), dim=1) @ F.normalize(candidates.float(), dim=1).T / temperature
    if excluded is not None:
        logits = logits.masked_fill(excluded, float("-inf"))
        positives = positives & ~excluded
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    num_positives = positives.sum(1)
    has_positive = num_positives > 0
    # where() rather than a product: excluded entries are -inf and -inf * 0 is NaN.
    positive_log_prob = torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(1)
    return -(positive_log_prob[has_positive] / num_positives[has_positive]).mean()


def nt_xent(
    embeddings: torch.Tensor, positives: torch.Tensor, temperature: float, anchors: torch.Tensor | None = None
) -> torch.Tensor:
    """SimCLR's NT-Xent over all views (M × D): every view against every other view.

    ``anchors`` (rows of ``embeddings``; default all) limits the anchors, not
    the candidates: a rank of a distributed run contrasts its own views with
    every rank's. ``positives`` is then given for the anchors' rows only (A × M).
    """
    rows = torch.arange(len(embeddings), device=embeddings.device)
    anchors = rows if anchors is None else anchors
    self_pairs = anchors[:, None] == rows[None, :]
    return info_nce(embeddings[anchors], embeddings, positives, temperature, excluded=self_pairs)
