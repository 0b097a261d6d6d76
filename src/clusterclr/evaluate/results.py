"""Protocol results: per-seed values summarised as mean ± std, merged into a run's metrics.json,
and printed as a table."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from clusterclr.errors import UserError
from clusterclr.io import write_json


def summarise(per_seed: list[dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Metric -> {"mean", "std" (sample std over seeds; None for one seed), "values" (one per seed)}."""
    summary = {}
    for name in per_seed[0]:
        values = [run[name] for run in per_seed]
        summary[name] = {
            "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else None,
            "values": values,
        }
    return summary


def merge_metrics(path: Path, keys: tuple[str, ...], section: Any) -> None:
    """Set ``metrics[keys[0]][keys[1]]...`` = ``section`` in the JSON file at ``path``, keeping every other key.

    Read, changed and written back atomically (temp file + rename); a missing
    file starts empty.
    """
    metrics = _read(path)
    node = metrics
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = section
    write_json(path, metrics)


def update_metrics(path: Path, updates: dict[str, Any]) -> None:
    """Replace the top-level keys ``updates`` names in the JSON file at ``path``; keep the rest (protocol results)."""
    write_json(path, {**_read(path), **updates})


def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"cannot update {path}: it is not readable JSON ({err}); move it aside") from None
    if not isinstance(metrics, dict):
        raise UserError(f"cannot update {path}: it holds {type(metrics).__name__}, not a JSON object; move it aside")
    return metrics


def results_table(sections: dict[str, dict[str, Any]]) -> str:
    """One row per protocol and metric: mean ± std over seeds (n = seeds)."""
    rows = [("protocol", "metric", "value", "seeds")]
    for name, section in sections.items():
        for metric, summary in section["metrics"].items():
            mean, std = summary["mean"], summary["std"]
            value = _number(mean) + ("" if std is None else f" ± {_number(std)}")
            rows.append((name, metric, value, str(len(summary["values"]))))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}" for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _number(value: float) -> str:
    return f"{value:.4f}" if 1e-3 <= abs(value) < 1e4 or value == 0 else f"{value:.1e}"
