"""Evaluation protocols of a trained run: one module per protocol, run over seeds by ``evaluate_protocols``.

A protocol module has ``STOCHASTIC`` (whether the seed matters),
``settings(ctx, options)`` (what it was run with, stored next to the
scores) and ``run(ctx, options, seed)`` (metric name -> value).
Deterministic protocols run once whatever the seeds.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from clusterclr.build import load_model, load_parts
from clusterclr.evaluate.context import EvalContext
from clusterclr.evaluate.protocols import head, kmeans, knn, linear, semi, transfer
from clusterclr.evaluate.protocols.options import ProtocolOptions
from clusterclr.evaluate.results import merge_metrics, summarise
from clusterclr.rundir import RunDir

PROTOCOLS: dict[str, ModuleType] = {
    "knn": knn, "linear": linear, "kmeans": kmeans, "head": head, "semi": semi, "transfer": transfer,
}


def evaluate_protocols(
    run_dir: RunDir, names: list[str], seeds: list[int], options: ProtocolOptions, progress: bool = True
) -> dict[str, dict[str, Any]]:
    """Run each protocol in ``names`` on the run in ``run_dir``; each result is merged into its metrics.json
    as soon as it is ready (under the protocol's name; transfer under ``transfer.<data set B>``)."""
    own_data = [name for name in names if name != "transfer"]
    if own_data:
        parts, epoch = load_parts(run_dir)
        model = parts
        source = EvalContext.of(parts, progress)
        source.require_labels()
    else:
        model, epoch = load_model(run_dir)
    sections = {}
    for name in names:
        protocol = PROTOCOLS[name]
        ctx = transfer.context(model, options.transfer_data, progress) if name == "transfer" else source
        used = seeds if protocol.STOCHASTIC else seeds[:1]
        section = {
            "epoch": epoch,
            "dataset": ctx.dataset,
            "split": ctx.eval_split,
            "seeds": used,
            "settings": protocol.settings(ctx, options),
            "metrics": summarise([protocol.run(ctx, options, seed) for seed in used]),
        }
        keys = ("transfer", ctx.dataset) if name == "transfer" else (name,)
        merge_metrics(run_dir.metrics, keys, section)
        sections[".".join(keys)] = section
    return sections
