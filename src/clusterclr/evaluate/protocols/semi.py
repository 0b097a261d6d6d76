"""Semi-supervised protocol: fine-tune on a class-balanced labelled fraction of train, test top-1.

Per fraction f (e.g. 1% and 10%): ``pct{100 f}_top1`` after fine-tuning and
``pct{100 f}_probe_top1``, the frozen-backbone probe fine-tuning starts from.
The subset and the fine-tuning are drawn from the seed.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from clusterclr.evaluate.context import EvalContext
from clusterclr.evaluate.finetune import finetune
from clusterclr.evaluate.protocols.options import ProtocolOptions
from clusterclr.evaluate.subsets import balanced_subset

STOCHASTIC = True


def settings(ctx: EvalContext, options: ProtocolOptions) -> dict[str, Any]:
    labelled = {fraction_name(f): len(balanced_subset(ctx.bank.labels, f, 0)) for f in options.semi_fractions}
    return {"fractions": list(options.semi_fractions), "labelled_images": labelled, **asdict(options.finetune)}


def run(ctx: EvalContext, options: ProtocolOptions, seed: int) -> dict[str, float]:
    result = {}
    for fraction in options.semi_fractions:
        labelled = ctx.bank.subset(balanced_subset(ctx.bank.labels, fraction, seed))
        scores = finetune(ctx.model, labelled, ctx.test, ctx.num_classes, options.finetune, seed, ctx.progress)
        result.update({f"{fraction_name(fraction)}_{name}": value for name, value in scores.items()})
    return result


def fraction_name(fraction: float) -> str:
    """0.01 -> "pct1", 0.1 -> "pct10", 0.005 -> "pct0.5"."""
    return f"pct{100 * fraction:g}"
