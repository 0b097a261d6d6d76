r"""SimSiam's loss (Chen & He, 2021): negative cosine similarity to a stopped target.

.. math::

    \mathcal{D}(p, z) = -\frac{p}{\lVert p \rVert_2} \cdot \frac{\mathrm{sg}(z)}{\lVert z \rVert_2}

averaged over the batch. The stop-gradient on :math:`z` is what keeps
SimSiam from collapsing; it is applied here, so callers cannot forget it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def negative_cosine(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    with torch.autocast(predictions.device.type, enabled=False):
        return -F.cosine_similarity(predictions.float(), targets.detach().float(), dim=1).mean()
