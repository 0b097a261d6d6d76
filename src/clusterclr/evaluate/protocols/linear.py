"""Linear protocol: a logistic-regression probe on frozen features, top-1 and top-5.

Stochastic only through the seeded validation split that picks the weight decay.
"""

from __future__ import annotations

from typing import Any

from clusterclr.evaluate.context import EvalContext
from clusterclr.evaluate.linear import VALIDATION_FRACTION, linear_probe
from clusterclr.evaluate.protocols.options import ProtocolOptions

STOCHASTIC = True


def settings(ctx: EvalContext, options: ProtocolOptions) -> dict[str, Any]:
    return {"weight_decays": list(options.weight_decays), "validation_fraction": VALIDATION_FRACTION}


def run(ctx: EvalContext, options: ProtocolOptions, seed: int) -> dict[str, float]:
    return linear_probe(
        ctx.embeddings("bank").features, ctx.bank.labels, ctx.embeddings("test").features, ctx.test.labels,
        seed, options.weight_decays,
    )
