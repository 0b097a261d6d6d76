"""SCAN's objective for the stage's heads: an image and its neighbour agree, clusters are used evenly."""

from __future__ import annotations

from typing import Any

import torch

from clusterclr.losses.scan import entropy, log_agreement, scan_loss
from clusterclr.models.cluster_heads import MultiHeadClassifier
from clusterclr.stage.graph import NeighbourGraph


class ScanObjective:
    """Trains ``heads`` with :func:`~clusterclr.losses.scan.scan_loss`; they also predict, at temperature 1."""

    prediction_temperature = 1.0

    def __init__(self, heads: MultiHeadClassifier, entropy_weight: float) -> None:
        self.heads = heads
        self.entropy_weight = entropy_weight

    def trainable(self) -> MultiHeadClassifier:
        return self.heads

    def predictor(self) -> MultiHeadClassifier:
        return self.heads

    def batch_losses(self, anchors: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        """Per-head loss (H,) of a batch of anchors' and neighbours' features (B × D each)."""
        logits = self.heads(torch.cat([anchors, neighbours]))
        return scan_loss(logits[:, : len(anchors)], logits[:, len(anchors) :], self.entropy_weight).total

    def after_step(self) -> None:
        """Nothing to follow the optimiser step: SCAN has no teacher."""

    @torch.no_grad()
    def evaluate(self, inputs: torch.Tensor, graph: NeighbourGraph) -> torch.Tensor:
        """Per-head loss (H,) over every image and every one of its neighbours, the entropy over all images.

        Runs over blocks of images (H × block × K' logits at a time), so
        memory stays bounded whatever N; neighbours' logits are recomputed.
        """
        n = len(inputs)
        disagreement = torch.zeros(self.heads.heads, dtype=torch.float64, device=inputs.device)
        probability_sum = torch.zeros(self.heads.heads, self.heads.clusters, dtype=torch.float64, device=inputs.device)
        block = max(1, 2**24 // (self.heads.heads * self.heads.clusters))
        for start in range(0, n, block):
            rows = slice(start, start + block)
            logits = self.heads(inputs[rows])
            probability_sum += logits.softmax(-1).sum(-2)
            for neighbours in graph.indices[rows].T:
                disagreement -= log_agreement(logits, self.heads(inputs[neighbours])).sum(-1)
        consistency = disagreement / (n * graph.neighbours)
        return consistency - self.entropy_weight * entropy(probability_sum / n)

    def state_dict(self) -> dict[str, Any]:
        return {"heads": self.heads.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.heads.load_state_dict(state["heads"])
