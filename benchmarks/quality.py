"""Representation and clustering quality of methods at a fixed budget.

Trains each method for each seed from one preset, then prints a table of
kNN accuracy and k-means NMI / ACC / ARI on the test split (mean ± std over
seeds, with wall time), plus the cluster head's NMI / ACC / ARI and the
precision of mined positive pairs for methods that have them, beside two
baselines, k-means on raw pixels and on a
randomly initialised backbone, and appends it to BENCHMARKS.md with the
command, date and machine.

    python benchmarks/quality.py --config configs/cifar10_subset_simclr.yaml --methods simclr --seeds 0 1 2
    python benchmarks/quality.py --config configs/cifar10_subset_{moco_v2,simsiam,byol}.yaml --seeds 0 1 2

A sweep: each ``--variant`` is a row of the first preset with its own
overrides on top (one quoted string of ``key=value`` pairs per row):

    python benchmarks/quality.py --config configs/cifar10_subset_center_predictor.yaml --no-baselines \
        --variant "method.clean_view_norm=separate" --variant "method.clean_view_norm=running"

Runs trained elsewhere (in parallel streams, or by several invocations) make
one table with ``--collect``; the time column is then the epochs' training
time from each run's log, and a second table follows the scores through
training (each evaluation of ``train.eval_every``), so the trend is visible:

    python benchmarks/quality.py --collect runs/benchmarks/*/simclr-seed* runs/benchmarks/*/sepp_simclr-seed*
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from machine import append_result

import clusterclr
from clusterclr.build import build_parts
from clusterclr.configure import build_config
from clusterclr.data.splits import load_splits
from clusterclr.errors import UserError
from clusterclr.evaluate.context import EvalContext
from clusterclr.evaluate.features import Embeddings
from clusterclr.evaluate.standard import evaluate_parts
from clusterclr.layering import read_yaml
from clusterclr.rundir import RunDir
from clusterclr.runlog import read_log

COLUMNS = ("knn_acc", "kmeans_nmi", "kmeans_acc", "kmeans_ari")
HEADERS = ("kNN", "NMI", "ACC", "ARI")
# Shown when some row has them: the cluster head's scores, and the label precision of
# the positive pairs a method mined and how many images had a partner, as of its last
# refresh (from its "method" log lines).
OPTIONAL_COLUMNS = {
    "head_nmi": "head NMI", "head_acc": "head ACC", "head_ari": "head ARI",
    "pair_precision": "pair precision", "partnered": "images with a partner",
    "pseudo_label_nmi": "pseudo-label NMI", "mate_precision": "cluster-mate precision",
}
SCORED_ON = {"test": "the test split", "holdout": "the held-out 20% of train (the set has no test split)"}


def raw_pixels(config_file: str, overrides: list[str], seed: int) -> dict:
    parts = build_parts(build_config(config_file, {"seed": seed}, overrides))
    splits = parts.splits
    if not splits.labelled:
        raise UserError(f"benchmarks score against labels, and data set '{splits.name}' has none")
    # The standard evaluation, with the pixels in place of the features.
    ctx = EvalContext.of(parts, progress=False)
    for split, data in (("bank", splits.bank), ("test", splits.test)):
        ctx.set_embeddings(split, Embeddings(data.images.flatten(1).float() / 255, None))
    return evaluate_parts(parts, ctx)


def random_backbone(config_file: str, overrides: list[str], seed: int, run_dir: Path) -> dict:
    # Last, so that no --set of the user's can turn the baseline into a trained model.
    config = build_config(config_file, {"seed": seed}, overrides + ["train.epochs=0", "train.report=false"])
    return clusterclr.train(config, out=run_dir).metrics


def trained(config_file: str, overrides: list[str], method: str, seed: int, run_dir: Path) -> dict:
    """Train ``method`` with the preset's data, model, optimiser and budget.

    The preset's method options belong to the preset's method; another
    method starts from its own defaults.
    """
    tree = read_yaml(config_file)
    if tree.get("method", {}).get("name") != method:
        tree["method"] = {"name": method}
    # No report: the wall-time column measures training and evaluation.
    clusterclr.train(build_config(tree, {"seed": seed}, ["train.report=false", *overrides]), out=run_dir)
    return run_metrics(run_dir)


def run_metrics(run_dir: Path) -> dict:
    """A finished run's scores, with what its log says of its mined pairs and pseudo-labels."""
    metrics = json.loads(RunDir(run_dir).metrics.read_text())
    if "stage" in metrics:  # a clustering stage fitted on the run later: its head is clustering_stage.py's to score
        metrics = {k: v for k, v in metrics.items() if not k.startswith("head_")}
    mates: dict[int, list[float]] = {}
    for record in read_log(RunDir(run_dir).log):
        if record["kind"] == "method" and record.get("pair_precision") is not None:
            metrics["pair_precision"] = record["pair_precision"]
            metrics["partnered"] = record["images_with_partner"] / metrics["num_train"]
        if record["kind"] == "method":
            # InterCLR's bank clusters, or PCL's coarsest clustering, against the classes, at their last fit.
            found = {k: v for k, v in record.items() if k.endswith("pseudo_label_nmi") and v is not None}
            if found:
                metrics["pseudo_label_nmi"] = found["pseudo_label_nmi"] if "pseudo_label_nmi" in found else found[min(found, key=clustering_size)]
        if record["kind"] == "step" and record.get("positive_precision") is not None:
            mates.setdefault(record["epoch"], []).append(record["positive_precision"])
    if mates:  # InterCLR's cluster-mate positives of the query's class, over the last epoch
        metrics["mate_precision"] = statistics.mean(mates[max(mates)])
    return metrics


def clustering_size(key: str) -> int:
    """PCL's ``k100_pseudo_label_nmi`` -> 100."""
    return int(key.split("_", 1)[0][1:])


def summarise(values: list[float | None]) -> str:
    if any(v is None for v in values):
        return "–"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collect", nargs="+", metavar="RUN_DIR",
                        help="no training: tabulate these finished runs (NAME-seedN directories), a row per NAME")
    parser.add_argument("--config", nargs="+",
                        help="preset YAML(s): each is a row, or, with --methods, the one preset every method uses")
    parser.add_argument("--methods", nargs="+", help="methods to train on the first preset (their own default options)")
    parser.add_argument("--variant", dest="variants", action="append", default=[], metavar="'KEY=VALUE ...'",
                        help="a row of the first preset with these overrides added (repeatable)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-baselines", action="store_true", help="skip raw-pixel and random-backbone rows")
    parser.add_argument("--runs", default="runs/benchmarks", help="where the run directories go")
    parser.add_argument("--results", default="BENCHMARKS.md", help="file the table is appended to")
    args = parser.parse_args()
    if not (args.config or args.collect):
        parser.error("--config is required unless --collect is given")
    try:
        return collect(args) if args.collect else run(args)
    except UserError as err:
        print(f"quality.py: error: {err}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    root = Path(args.runs) / time.strftime("%Y%m%d-%H%M%S")
    rows: list[tuple[str, list[dict], list[float]]] = []

    def measure(label: str, one_seed) -> None:
        results, seconds = [], []
        for seed in args.seeds:
            start = time.perf_counter()
            results.append(one_seed(seed))
            seconds.append(time.perf_counter() - start)
            print(f"{label} seed {seed}: " + ", ".join(f"{k}={results[-1][k]:.4f}" for k in COLUMNS), file=sys.stderr)
        rows.append((label, results, seconds))

    base = args.config[0]
    if not args.no_baselines:
        measure("k-means on raw pixels", lambda s: raw_pixels(base, args.overrides, s))
        measure("random-init backbone", lambda s: random_backbone(base, args.overrides, s, root / f"random-seed{s}"))
    if args.variants:
        method = build_config(base, None, args.overrides).method.name
        rows_to_train = [(base, method, v.split(), f"{method} ({v})") for v in args.variants]
    else:
        rows_to_train = (
            [(base, m, [], m) for m in args.methods] if args.methods
            else [(c, build_config(c, None, args.overrides).method.name, [], "") for c in args.config]
        )
    methods = [m for _, m, _, _ in rows_to_train]
    for i, (preset, method, extra, label) in enumerate(rows_to_train):
        # Presets that share a method (ablations) are told apart by their file name.
        label = label or (method if methods.count(method) == 1 else f"{method} ({Path(preset).stem})")
        run_name = f"{method}-variant{i}" if extra else label.replace(" ", "_").replace("(", "").replace(")", "")
        measure(label, lambda s, p=preset, m=method, r=run_name, o=[*args.overrides, *extra]: trained(p, o, m, s, root / f"{r}-seed{s}"))

    config = build_config(base, None, args.overrides)
    parts_note = (
        f"{config.data.dataset}, {config.model.backbone} ×{config.model.width} ({config.model.stem} stem), "
        f"{config.train.epochs} epochs, batch {config.optim.batch_size}, {config.optim.name} lr {config.optim.lr}"
    )
    table = score_table(rows, "wall time (s)")
    print(table)

    append_result(
        args.results,
        f"{Path(base).stem}: {', '.join(m for _, m, _, _ in rows_to_train)}",
        f"{parts_note} (the first preset's; each row trains with its own preset's method and optimiser); "
        f"scores on {SCORED_ON[load_splits(config.data).eval_split]}",
        table,
    )
    return 0


def score_table(rows: list[tuple[str, list[dict], list[float]]], time_header: str) -> str:
    columns = list(COLUMNS) + [k for k in OPTIONAL_COLUMNS if any(r.get(k) is not None for _, rs, _ in rows for r in rs)]
    headers = list(HEADERS) + [OPTIONAL_COLUMNS[k] for k in columns[len(COLUMNS):]]
    lines = [
        f"| method | seeds | {' | '.join(headers)} | {time_header} |",
        "|---|---|" + "---|" * len(headers) + "---|",
    ]
    for label, results, seconds in rows:
        cells = [summarise([r.get(k) for r in results]) for k in columns]
        lines.append(f"| {label} | {len(results)} | {' | '.join(cells)} | {statistics.mean(seconds):.0f} |")
    return "\n".join(lines)


def scores_by_epoch(log: list[dict], final: dict) -> dict[int, dict]:
    """A run's evaluations during training (its log's eval records) and its final one, by epoch."""
    found = {r["epoch"]: r for r in log if r["kind"] == "eval"}
    return found | {final["epoch"]: final}


def curve_table(curves: dict[str, list[dict[int, dict]]]) -> str:
    """kNN and k-means NMI by epoch, a row per method and score; epochs every run of the method has."""
    epochs = sorted({e for runs in curves.values() for run in runs for e in run})
    lines = [f"| method | score | {' | '.join(f'epoch {e}' for e in epochs)} |", "|---|---|" + "---|" * len(epochs)]
    for label, runs in curves.items():
        for key, name in (("knn_acc", "kNN"), ("kmeans_nmi", "NMI")):
            cells = [summarise([run[e].get(key) for run in runs]) if all(e in run for run in runs) else "–" for e in epochs]
            lines.append(f"| {label} | {name} | {' | '.join(cells)} |")
    return "\n".join(lines)


def collect(args: argparse.Namespace) -> int:
    """A table of runs already trained (``NAME-seedN`` directories, as this script names them), rows by NAME."""
    rows: dict[str, tuple[list[dict], list[float]]] = {}
    curves: dict[str, list[dict[int, dict]]] = {}
    for directory in map(Path, args.collect):
        if not RunDir(directory).metrics.is_file():
            raise UserError(f"{directory} holds no finished run (no {RunDir(directory).metrics.name})")
        label = directory.name.rsplit("-seed", 1)[0]
        results, seconds = rows.setdefault(label, ([], []))
        results.append(run_metrics(directory))
        log = list(read_log(RunDir(directory).log))
        seconds.append(sum(r["seconds"] for r in log if r["kind"] == "epoch"))
        curves.setdefault(label, []).append(scores_by_epoch(log, results[-1]))
    table = score_table([(label, *found) for label, found in rows.items()], "training time (s)")
    table += "\n\nThe same runs' scores at each evaluation during training (`train.eval_every`), mean ± std over seeds:\n\n"
    table += curve_table(curves)
    print(table)
    append_result(args.results, f"collected runs: {', '.join(rows)}",
                  f"{len(args.collect)} finished runs, those of the command (the machine line is the collecting process's, "
                  "not the runs')", table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
