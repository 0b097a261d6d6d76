"""Linear probe: multinomial logistic regression on frozen, standardised features.

Features are extracted once; the probe is then a small convex problem,
solved full-batch with L-BFGS in float64 (seconds on a CPU, no epochs or
learning rate to tune). The objective is

    mean_i CE(W x_i + b, y_i) + weight_decay / 2 * ||W||^2

which is scikit-learn's ``LogisticRegression(C=1 / (weight_decay * N))``.
The weight decay is chosen from a sweep by top-1 (then cross-entropy) on a
seeded, stratified held-out part of the training features; the probe is then refitted on all
of them and scored on the test features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from clusterclr.evaluate.subsets import stratified_split

WEIGHT_DECAYS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
VALIDATION_FRACTION = 0.2


@dataclass
class LinearModel:
    """A fitted probe on raw features: ``logits = ((x - mean) / std) @ weight + bias``."""

    mean: torch.Tensor  # D
    std: torch.Tensor  # D
    weight: torch.Tensor  # D × C
    bias: torch.Tensor  # C

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return ((features.double() - self.mean) / self.std) @ self.weight + self.bias

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight C × D, bias C) of one linear layer on raw features that computes the same logits."""
        weight = self.weight / self.std[:, None]
        return weight.T.contiguous(), self.bias - self.mean @ weight


def fit_logistic(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float, max_iter: int = 500
) -> LinearModel:
    """Multinomial logistic regression on standardised ``features`` (N × D), deterministic (zero start)."""
    x = features.double()
    mean = x.mean(0)
    std = x.std(0, unbiased=False)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))  # constant features stay constant, not NaN
    x = (x - mean) / std
    y = labels.long()
    weight = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
        tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + weight_decay / 2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return LinearModel(mean, std, weight.detach(), bias.detach())


def select_weight_decay(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, seed: int,
    weight_decays: tuple[float, ...] = WEIGHT_DECAYS,
) -> float:
    """The weight decay with the best top-1 on a held-out part of ``features``.

    Ties (common on easy data, where many weight decays get every held-out
    image right) go to the lower held-out cross-entropy.
    """
    kept, held = stratified_split(labels, VALIDATION_FRACTION, seed)
    scored = []
    for weight_decay in weight_decays:
        logits = fit_logistic(features[kept], labels[kept], num_classes, weight_decay).logits(features[held])
        accuracy = topk_accuracy(logits.numpy(), labels[held].numpy(), 1)
        scored.append((accuracy, -F.cross_entropy(logits, labels[held].long()).item(), weight_decay))
    return max(scored)[2]


def linear_probe(
    train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor,
    seed: int, weight_decays: tuple[float, ...] = WEIGHT_DECAYS,
) -> dict[str, float]:
    """Top-1 and top-5 test accuracy of the probe, and the weight decay the sweep chose."""
    num_classes = int(torch.cat([train_labels, test_labels]).max()) + 1
    weight_decay = select_weight_decay(train, train_labels, num_classes, seed, weight_decays)
    model = fit_logistic(train, train_labels, num_classes, weight_decay)
    scores, labels = model.logits(test).numpy(), test_labels.numpy()
    return {
        "top1": topk_accuracy(scores, labels, 1),
        "top5": topk_accuracy(scores, labels, 5),
        "weight_decay": weight_decay,
    }


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows of ``scores`` (N × C) whose ``k`` highest entries include the label (k clipped to C)."""
    scores, labels = np.asarray(scores), np.asarray(labels)
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())
