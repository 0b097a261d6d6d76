r"""BYOL's loss (Grill et al., 2020): squared distance of L2-normalised vectors.

.. math::

    \mathcal{L}(p, z') = \left\lVert \frac{p}{\lVert p \rVert_2} - \frac{\mathrm{sg}(z')}{\lVert z' \rVert_2} \right\rVert_2^2
                       = 2 - 2 \cos(p, z')

averaged over the batch; :math:`z'` is the target network's projection, and
no gradient flows into it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def normalized_mse(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    with torch.autocast(predictions.device.type, enabled=False):
        p = F.normalize(predictions.float(), dim=1)
        z = F.normalize(targets.detach().float(), dim=1)
        return (p - z).square().sum(dim=1).mean()
