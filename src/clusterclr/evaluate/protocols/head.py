"""Head protocol: the method's own cluster head (cc's softmax head, center_predictor's centres),
scored like k-means (deterministic: the head is part of the trained model)."""

from __future__ import annotations

from typing import Any

import torch

from clusterclr.errors import UserError
from clusterclr.evaluate.context import EvalContext
from clusterclr.evaluate.protocols.kmeans import partition_scores
from clusterclr.evaluate.protocols.options import ProtocolOptions
from clusterclr.methods.registry import methods_with_cluster_head

STOCHASTIC = False


def settings(ctx: EvalContext, options: ProtocolOptions) -> dict[str, Any]:
    return {"clusters": _probabilities(ctx, "bank").shape[1]}


def run(ctx: EvalContext, options: ProtocolOptions, seed: int) -> dict[str, float]:
    bank, test = _probabilities(ctx, "bank"), _probabilities(ctx, "test")
    return partition_scores(ctx.bank.labels, bank.argmax(1).numpy(), ctx.test.labels, test.argmax(1).numpy(), bank.shape[1])


def _probabilities(ctx: EvalContext, split: str) -> torch.Tensor:
    method = ctx.model.method
    if ctx.model.cluster_head() is None:
        raise UserError(
            f"{method.name} has no cluster head; --protocol head works for runs of: {', '.join(methods_with_cluster_head())}, "
            "and for any run after `clusterclr stage RUN_DIR` fits one"
        )
    probabilities = ctx.embeddings(split).cluster_probabilities
    if probabilities is None:
        raise UserError(f"this {method.name} run has no cluster head yet (its centres are set when clustering starts)")
    return probabilities
