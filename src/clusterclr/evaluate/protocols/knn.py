"""kNN protocol: weighted k-nearest-neighbour top-1 and top-5 for one or more k (deterministic)."""

from __future__ import annotations

from typing import Any

from clusterclr.evaluate.context import EvalContext
from clusterclr.evaluate.knn import knn_accuracy
from clusterclr.evaluate.protocols.options import ProtocolOptions

STOCHASTIC = False


def settings(ctx: EvalContext, options: ProtocolOptions) -> dict[str, Any]:
    return {"k": list(_ks(ctx, options)), "temperature": _temperature(ctx, options)}


def run(ctx: EvalContext, options: ProtocolOptions, seed: int) -> dict[str, float]:
    bank, test = ctx.embeddings("bank").features, ctx.embeddings("test").features
    result = {}
    for k in _ks(ctx, options):
        scores = knn_accuracy(bank, ctx.bank.labels, test, ctx.test.labels, k=k, temperature=_temperature(ctx, options))
        result.update({f"k{k}_top1": scores["top1"], f"k{k}_top5": scores["top5"]})
    return result


def _ks(ctx: EvalContext, options: ProtocolOptions) -> tuple[int, ...]:
    return options.knn_k or (ctx.model.config.eval.knn_k,)


def _temperature(ctx: EvalContext, options: ProtocolOptions) -> float:
    return options.knn_temperature or ctx.model.config.eval.knn_temperature
