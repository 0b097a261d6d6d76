r"""Multi-positive InfoNCE: anchors against candidates under a positive mask.

For L2-normalised anchors :math:`a_i`, candidates :math:`c_j`, positive
weights :math:`w_{ij} \ge 0` and a mask :math:`E` of pairs left out
entirely (e.g. a view paired with itself), the loss of anchor :math:`i` is

.. math::

    \ell_i = -\frac{1}{\sum_j w_{ij}} \sum_{j} w_{ij}
             \log \frac{\exp(a_i \cdot c_j / \tau)}
                       {\sum_{k \notin E_i} \exp(a_i \cdot c_k / \tau)}

averaged over the anchors that have a positive (some :math:`w_{ij} > 0`).
A boolean mask :math:`P` is the weights :math:`w_{ij} = [j \in P_i]`: each
positive counts :math:`1/|P_i|`. Weights change only how an anchor's pull
is shared among its positives, never the negatives: semantic partners use
them to keep an image's own view at a fixed share (``positives/semantic.py``).
Every contrastive method here is this loss with a different mask:

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

    ``positives`` is an A × C boolean mask, or A × C non-negative float
    weights (each row is normalised by its sum); ``excluded`` an A × C
    boolean mask of pairs that are neither positives nor negatives.
    """
    shape = (anchors.shape[0], candidates.shape[0])
    if positives.shape != shape or (excluded is not None and excluded.shape != shape):
        raise ValueError(f"masks must be {shape[0]}×{shape[1]}, got {tuple(positives.shape)}")
    with torch.autocast(anchors.device.type, enabled=False):
        logits = F.normalize(anchors.float(), dim=1) @ F.normalize(candidates.float(), dim=1).T / temperature
    # A boolean mask is weights of one: 1.0 * x is x, so its loss is bit for bit the unweighted one.
    weights = positives.to(logits.dtype)
    if excluded is not None:
        logits = logits.masked_fill(excluded, float("-inf"))
        weights = weights.masked_fill(excluded, 0.0)
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    total_weight = weights.sum(1)
    has_positive = total_weight > 0
    # where() rather than a product alone: excluded entries are -inf and -inf * 0 is NaN.
    positive_log_prob = torch.where(weights > 0, weights * log_prob, torch.zeros_like(log_prob)).sum(1)
    return -(positive_log_prob[has_positive] / total_weight[has_positive]).mean()


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
