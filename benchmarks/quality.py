"""Representation and clustering quality of methods at a fixed budget.

Trains each method for each seed from one preset, then prints a table of
kNN accuracy and k-means NMI / ACC / ARI on the test split (mean ± std over
seeds, with wall time) beside two baselines, k-means on raw pixels and on a
randomly initialised backbone, and appends it to BENCHMARKS.md with the
command, date and machine.

    python benchmarks/quality.py --config configs/cifar10_subset_simclr.yaml --methods simclr --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

from clusterclr.build import resolve_clusters
from clusterclr.config import build_config
from clusterclr.data.splits import load_splits
from clusterclr.evaluate.protocol import evaluate_features
from clusterclr.train import start_run

COLUMNS = ("knn_acc", "kmeans_nmi", "kmeans_acc", "kmeans_ari")
HEADERS = ("kNN", "NMI", "ACC", "ARI")


def raw_pixels(config_file: str, overrides: list[str], seed: int) -> dict:
    config = build_config(config_file, {"seed": seed}, overrides)
    splits = load_splits(config.data)
    flat = lambda d: d.images.flatten(1).float() / 255  # noqa: E731
    return evaluate_features(
        flat(splits.bank), splits.bank.labels, flat(splits.test), splits.test.labels,
        resolve_clusters(config, splits), config.eval, seed=seed,
    )


def random_backbone(config_file: str, overrides: list[str], seed: int, run_dir: Path) -> dict:
    # Last, so that no --set of the user's can turn the baseline into a trained model.
    config = build_config(config_file, {"seed": seed}, overrides + ["train.epochs=0"])
    return start_run(config, run_dir)


def trained(config_file: str, overrides: list[str], method: str, seed: int, run_dir: Path) -> dict:
    config = build_config(config_file, {"seed": seed}, overrides + [f"method.name={method}"])
    return start_run(config, run_dir)


def summarise(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, Python {platform.python_version()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="preset YAML shared by every method")
    parser.add_argument("--methods", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-baselines", action="store_true", help="skip raw-pixel and random-backbone rows")
    parser.add_argument("--runs", default="runs/benchmarks", help="where the run directories go")
    parser.add_argument("--results", default="BENCHMARKS.md", help="file the table is appended to")
    args = parser.parse_args()

    root = Path(args.runs) / time.strftime("%Y%m%d-%H%M%S")
    rows: list[tuple[str, list[dict], list[float]]] = []

    def measure(label: str, run) -> None:
        results, seconds = [], []
        for seed in args.seeds:
            start = time.perf_counter()
            results.append(run(seed))
            seconds.append(time.perf_counter() - start)
            print(f"{label} seed {seed}: " + ", ".join(f"{k}={results[-1][k]:.4f}" for k in COLUMNS), file=sys.stderr)
        rows.append((label, results, seconds))

    if not args.no_baselines:
        measure("k-means on raw pixels", lambda s: raw_pixels(args.config, args.overrides, s))
        measure("random-init backbone", lambda s: random_backbone(args.config, args.overrides, s, root / f"random-seed{s}"))
    for method in args.methods:
        measure(method, lambda s, m=method: trained(args.config, args.overrides, m, s, root / f"{m}-seed{s}"))

    config = build_config(args.config, None, args.overrides)
    parts_note = (
        f"{config.data.dataset}, {config.model.backbone} ×{config.model.width} ({config.model.stem} stem), "
        f"{config.train.epochs} epochs, batch {config.optim.batch_size}, {config.optim.name} lr {config.optim.lr}"
    )
    lines = [
        f"| method | seeds | {' | '.join(HEADERS)} | wall time (s) |",
        "|---|---|" + "---|" * len(HEADERS) + "---|",
    ]
    for label, results, seconds in rows:
        cells = [summarise([r[k] for r in results]) for k in COLUMNS]
        lines.append(f"| {label} | {len(results)} | {' | '.join(cells)} | {statistics.mean(seconds):.0f} |")
    table = "\n".join(lines)
    print(table)

    command = "python benchmarks/quality.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    block = (
        f"\n### {Path(args.config).stem}: {', '.join(args.methods)} ({date.today().isoformat()})\n\n"
        f"- command: `{command}`\n- setting: {parts_note}; scores on the test split\n"
        f"- machine: {machine()}\n\n{table}\n"
    )
    with open(args.results, "a", encoding="utf-8") as f:
        f.write(block)
    print(f"appended to {args.results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
