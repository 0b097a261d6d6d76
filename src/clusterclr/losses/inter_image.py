r"""InterCLR's inter-image loss: InfoNCE with a cosine margin on the positive logit.

For a query :math:`q`, one positive :math:`p` (a memory feature of another
image with the query's pseudo-label), negatives :math:`n_1 \dots n_M`, all
L2-normalised, a margin :math:`m` and a temperature :math:`\tau`:

.. math::

    \ell = -\log \frac{\exp((q \cdot p - m)/\tau)}
                      {\exp((q \cdot p - m)/\tau) + \sum_{j} \exp(q \cdot n_j / \tau)}

averaged over the queries. Only the positive logit carries the margin
(CosFace's additive cosine margin, Wang et al., 2018). :math:`m > 0`
tightens the boundary: the positive must beat the negatives by :math:`m`
in cosine before the loss stops pushing. :math:`m < 0` loosens it: the
positive's logit is raised by :math:`|m|/\tau`, so a cluster mate that is
only moderately similar to the query already costs little and the pull
towards it is weaker. InterCLR (Xie et al., 2022) uses :math:`m = -0.5`
because pseudo-label positives are noisy: a wrongly clustered "positive"
should not be forced onto the query. With :math:`m = 0` this is MoCo's
InfoNCE with one positive.

Negatives marked invalid (a sampler that found too few) are left out of the
denominator. Computed in fp32 even under autocast, like ``contrastive.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def margin_info_nce(
    queries: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    margin: float,
    temperature: float,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean loss of B ``queries`` (B × D) with one positive each (B × D) and M negatives each (B × M × D).

    ``valid`` (B × M, boolean) marks the negatives that count; all do by default.
    """
    b, d = queries.shape
    if positives.shape != (b, d) or negatives.ndim != 3 or negatives.shape[::2] != (b, d):
        raise ValueError(
            f"expected positives {(b, d)} and negatives (B, M, D) = ({b}, M, {d}) for queries {(b, d)}, "
            f"got {tuple(positives.shape)} and {tuple(negatives.shape)}"
        )
    with torch.autocast(queries.device.type, enabled=False):
        q = F.normalize(queries.float(), dim=1)
        positive_logit = ((q * F.normalize(positives.float(), dim=1)).sum(1, keepdim=True) - margin) / temperature
        negative_logits = torch.einsum("bd,bmd->bm", q, F.normalize(negatives.float(), dim=2)) / temperature
    if valid is not None:
        negative_logits = negative_logits.masked_fill(~valid, float("-inf"))
    logits = torch.cat([positive_logit, negative_logits], dim=1)
    return -(positive_logit.squeeze(1) - torch.logsumexp(logits, dim=1)).mean()
