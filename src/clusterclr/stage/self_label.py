"""Self-labelling of the kept head on frozen features: its confident predictions become its training labels.

SCAN's self-labelling takes the labels from a weakly augmented view and
trains on a strongly augmented one, so the head learns to be right on
harder versions of the images it is sure of. Frozen features have no
views: here labels and training input are the anchor's own features, so
the step only rebalances and sharpens the head around its confident
images. The strong-augmentation version needs the images and the
backbone, in the end-to-end mode; its loss is the same
:func:`~clusterclr.losses.scan.self_label_loss` with the two views' logits.
"""

from __future__ import annotations

from typing import Any

import torch

from clusterclr.losses.scan import self_label_loss
from clusterclr.models.cluster_heads import MultiHeadClassifier


class SelfLabelObjective:
    """Trains one head on its own confident pseudo-labels (class-balanced cross-entropy)."""

    def __init__(self, head: MultiHeadClassifier, temperature: float, confidence: float) -> None:
        self.head = head
        self.prediction_temperature = temperature
        self.confidence = confidence

    def trainable(self) -> MultiHeadClassifier:
        return self.head

    def predictor(self) -> MultiHeadClassifier:
        return self.head

    def batch_losses(self, anchors: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        """Loss (1,) of a batch of anchors' features; the neighbours play no part."""
        return self_label_loss(self.head(anchors) / self.prediction_temperature, threshold=self.confidence).loss

    def after_step(self) -> None:
        """Nothing to follow the optimiser step."""

    def state_dict(self) -> dict[str, Any]:
        return {"head": self.head.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.head.load_state_dict(state["head"])
