"""A finished stage's kept head as a module on raw backbone features: what a run's model clusters with.

It repeats the stage's input preparation (centred on the training
features' mean, L2-normalised) and its prediction (logits over the
objective's temperature, softmax), so it applies to any image's features,
and exports with the backbone (``export.py``) as one traced module.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clusterclr.models.cluster_heads import MultiHeadClassifier


class StageHead(nn.Module):
    def __init__(self, head: MultiHeadClassifier, mean: torch.Tensor, temperature: float) -> None:
        super().__init__()
        if head.heads != 1:
            raise ValueError(f"a stage keeps one head, got {head.heads}")
        self.head = head
        self.register_buffer("mean", mean.detach().float().clone())
        self.temperature = temperature

    @property
    def clusters(self) -> int:
        return self.head.clusters

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Cluster probabilities N × K of backbone features N × D, in float32 whatever autocast is on (as fitted)."""
        with torch.autocast(features.device.type, enabled=False):
            inputs = F.normalize(features.float() - self.mean, dim=1)
            return (self.head(inputs)[0] / self.temperature).softmax(-1)

    def saved(self) -> dict[str, Any]:
        """Everything needed to rebuild this head (``from_saved``): plain data and tensors, loadable with weights_only."""
        h = self.head
        return {
            "in_dim": h.in_dim, "clusters": h.clusters, "hidden_dim": h.hidden_dim, "cosine": h.cosine,
            "temperature": self.temperature, "state": {k: v.cpu() for k, v in self.state_dict().items()},
        }

    @classmethod
    def from_saved(cls, saved: dict[str, Any]) -> StageHead:
        head = MultiHeadClassifier(saved["in_dim"], saved["clusters"], 1, saved["hidden_dim"], saved["cosine"])
        module = cls(head, torch.zeros(saved["in_dim"]), saved["temperature"])
        module.load_state_dict(saved["state"])
        return module
