"""TEMI's objective for the stage's heads: a student trained on weighted PMI against an EMA teacher."""

from __future__ import annotations

import copy
from typing import Any

import torch

from clusterclr.losses.temi import teacher_probabilities, temi_loss, updated_marginal
from clusterclr.models.cluster_heads import MultiHeadClassifier
from clusterclr.stage.graph import NeighbourGraph


class TemiObjective:
    """Trains the student ``heads`` with :func:`~clusterclr.losses.temi.temi_loss`; the teacher predicts.

    The teacher starts as a copy of the student and follows it by an EMA
    after every step; the cluster marginal q̃_t starts uniform and follows
    the teacher's batch means. As in the paper, the teacher's heads are the
    ones read at the end, at the teacher's temperature.
    """

    def __init__(
        self,
        heads: MultiHeadClassifier,
        beta: float,
        student_temperature: float,
        teacher_temperature: float,
        teacher_momentum: float,
        marginal_momentum: float,
    ) -> None:
        self.student = heads
        self.teacher = copy.deepcopy(heads).requires_grad_(False)
        self.marginal = torch.full((heads.heads, heads.clusters), 1 / heads.clusters, device=heads.weights[0].device)
        self.beta = beta
        self.student_temperature = student_temperature
        self.prediction_temperature = teacher_temperature
        self.teacher_momentum = teacher_momentum
        self.marginal_momentum = marginal_momentum

    def trainable(self) -> MultiHeadClassifier:
        return self.student

    def predictor(self) -> MultiHeadClassifier:
        return self.teacher

    def batch_losses(self, anchors: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        """Per-head loss (H,) of a batch of anchors' and neighbours' features (B × D each); moves q̃_t first."""
        student, teacher = self._outputs(torch.cat([anchors, neighbours]))
        self.marginal = updated_marginal(self.marginal, teacher, self.marginal_momentum)
        b = len(anchors)
        return temi_loss(student[:, :b], student[:, b:], teacher[:, :b], teacher[:, b:], self.marginal, self.beta, self.student_temperature)

    @torch.no_grad()
    def after_step(self) -> None:
        for teacher, student in zip(self.teacher.parameters(), self.student.parameters()):
            teacher.lerp_(student, 1 - self.teacher_momentum)

    @torch.no_grad()
    def evaluate(self, inputs: torch.Tensor, graph: NeighbourGraph) -> torch.Tensor:
        """Per-head loss (H,) over every image and every one of its neighbours, with q̃_t as training left it.

        Runs over blocks of images (H × block × K' logits at a time), so
        memory stays bounded whatever N; neighbours' logits are recomputed.
        """
        n = len(inputs)
        total = torch.zeros(self.student.heads, dtype=torch.float64, device=inputs.device)
        block = max(1, 2**24 // (self.student.heads * self.student.clusters))
        for start in range(0, n, block):
            rows = slice(start, start + block)
            student, teacher = self._outputs(inputs[rows])
            for neighbours in graph.indices[rows].T:
                student_n, teacher_n = self._outputs(inputs[neighbours])
                loss = temi_loss(student, student_n, teacher, teacher_n, self.marginal, self.beta, self.student_temperature)
                total += loss * len(neighbours)
        return total / (n * graph.neighbours)

    def _outputs(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The student's logits and the teacher's probabilities, each H × N × K'."""
        return self.student(inputs), teacher_probabilities(self.teacher(inputs), self.prediction_temperature)

    def state_dict(self) -> dict[str, Any]:
        return {"student": self.student.state_dict(), "teacher": self.teacher.state_dict(), "marginal": self.marginal.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.marginal = state["marginal"].to(self.marginal.device, self.marginal.dtype)
