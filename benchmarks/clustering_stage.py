"""The clustering stage against k-means on the same features, and `clusterclr cluster`'s old default against its new one.

Part 1, for one preset and several seeds: train the preset, then on its
features score (on the test split, or the held-out part of train)
k-means (the run's own evaluation), the frozen stage with SCAN, with SCAN
and self-labelling, with TEMI, and SCAN end to end (backbone fine-tuned,
then self-labelling), each with its wall time:

    python benchmarks/clustering_stage.py stage --config configs/cifar10_subset_simclr.yaml \
        --set data.root=../shared/data/cifar-10-batches-py --seeds 0 1 2

Part 2: `clusterclr cluster` on a folder of real CIFAR-10 PNGs in class
subfolders (the labels score the clusters; training never sees them),
today's default against the one before (64 px, no stage), and with
``--row`` today's default with other settings:

    python benchmarks/clustering_stage.py command --cifar ../shared/data/cifar-10-batches-py --images 1000 --seeds 0 1 2 \
        --row "train.epochs=100"

Part 3: a sweep of the frozen stage's settings on runs already trained
(part 1's ``pretext-seed*`` folders, one per seed), k-means and the
stage's defaults beside each variant of the ``stage`` section, and with
``--e2e-epochs`` SCAN end to end from each run:

    python benchmarks/clustering_stage.py sweep runs/benchmarks/DATE/pretext-seed* \
        --variant "neighbours=5" --variant "entropy_weight=2" --e2e-epochs 30
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from machine import append_result
from PIL import Image

import clusterclr
from clusterclr.clustering.metrics import clustering_scores
from clusterclr.configure import build_config
from clusterclr.data.cifar import load_cifar10

SCORES = ("nmi", "acc", "ari")
STAGES: dict[str, dict] = {
    "SCAN, frozen": {"loss": "scan"},
    "SCAN + self-labelling, frozen": {"loss": "scan", "self_label_epochs": 20},
    "TEMI, frozen": {"loss": "temi"},
}


def cell(values: list[float]) -> str:
    return f"{values[0]:.3f}" if len(values) == 1 else f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(rows: dict[str, list[tuple[dict[str, float], float]]]) -> str:
    """Scores per row (mean ± std over seeds), with the mined neighbours' class precision where a stage mined them."""
    lines = ["| clusters by | seeds | NMI | ACC | ARI | neighbour precision | wall time (s) |", "|---|---|---|---|---|---|---|"]
    for label, results in rows.items():
        scores = [cell([r[name] for r, _ in results]) for name in SCORES]
        precision = [r["neighbour_precision"] for r, _ in results if r.get("neighbour_precision") is not None]
        shown = cell(precision) if precision else "–"
        lines.append(f"| {label} | {len(results)} | {' | '.join(scores)} | {shown} | {statistics.mean(t for _, t in results):.0f} |")
    return "\n".join(lines)


def latest(prefix: str, rows: dict[str, list[tuple[dict[str, float], float]]]) -> None:
    """One seed's NMI / ACC per row, printed as it finishes, so the per-seed gains can be quoted."""
    cells = "; ".join(f"{k}: {v[-1][0]['nmi']:.3f} / {v[-1][0]['acc']:.3f} in {v[-1][1]:.0f} s" for k, v in rows.items())
    print(f"{prefix} (NMI / ACC): {cells}", file=sys.stderr)


def timed(work: Callable[[], dict[str, float]]) -> tuple[dict[str, float], float]:
    start = time.perf_counter()
    scores = work()
    return scores, time.perf_counter() - start


def head(metrics: dict) -> dict[str, float]:
    scores = {name: metrics[f"head_{name}"] for name in SCORES}
    return {**scores, "neighbour_precision": metrics.get("stage", {}).get("neighbour_precision")}


def add_end_to_end(rows: dict[str, list[tuple[dict[str, float], float]]], run: clusterclr.Run, out: Path,
                   args: argparse.Namespace) -> None:
    """SCAN end to end from ``run`` into ``out``, timed, as a row of ``rows``."""
    tuned = timed(lambda: head(run.fit_stage_end_to_end(out, epochs=args.e2e_epochs, self_label_epochs=args.self_label_epochs).metrics))
    rows.setdefault(f"SCAN end to end ({args.e2e_epochs} + {args.self_label_epochs} self-labelling epochs)", []).append(tuned)


def stage_rows(args: argparse.Namespace) -> int:
    root = Path(args.runs) / time.strftime("%Y%m%d-%H%M%S")
    rows: dict[str, list[tuple[dict[str, float], float]]] = {}
    for seed in args.seeds:
        config = build_config(args.config, {"seed": seed}, ["train.report=false", "train.progress=false", *args.overrides])
        start = time.perf_counter()
        run = clusterclr.train(config, out=root / f"pretext-seed{seed}")
        rows.setdefault(f"k-means ({config.method.name} features)", []).append(
            ({name: run.metrics[f"kmeans_{name}"] for name in SCORES}, time.perf_counter() - start))
        for label, settings in STAGES.items():
            rows.setdefault(label, []).append(timed(lambda s=settings: head(run.fit_stage(settings=s, progress=False))))
        add_end_to_end(rows, run, root / f"scan-seed{seed}", args)
        latest(f"seed {seed}", rows)
    print(table(rows))
    config = build_config(args.config, None, args.overrides)
    setting = (f"{config.data.dataset}, {config.method.name} preset {Path(args.config).name} ({config.train.epochs} epochs, "
               f"{config.model.backbone} ×{config.model.width}); every row clusters its features into K = "
               f"{config.clusters or 'the classes'}; scores on the evaluation split; frozen stages fit on the train split's "
               "features (defaults of the stage section); wall time: the pretext training for k-means, the stage alone otherwise")
    append_result(args.results, f"clustering stage on {Path(args.config).stem}", setting, table(rows))
    return 0


def sweep_rows(args: argparse.Namespace) -> int:
    rows: dict[str, list[tuple[dict[str, float], float]]] = {}
    variants = {"defaults": {}} | {v: dict(pair.split("=", 1) for pair in v.split()) for v in args.variants}
    for path in args.run_dirs:
        run = clusterclr.load(path)
        rows.setdefault("k-means", []).append(({name: run.metrics[f"kmeans_{name}"] for name in SCORES}, 0.0))
        for label, settings in variants.items():
            rows.setdefault(f"stage: {label}", []).append(timed(lambda s=settings: head(run.fit_stage(settings=s, progress=False))))
        if args.e2e_epochs:
            add_end_to_end(rows, run, Path(args.runs) / f"scan-{Path(path).name}", args)
        latest(path, rows)
    print(table(rows))
    setting = (f"the frozen stage's settings on {len(args.run_dirs)} trained runs ({', '.join(args.run_dirs)}); every other "
               "stage setting its default; scores on each run's evaluation split; wall time: the stage alone")
    append_result(args.results, "clustering stage settings", setting, table(rows))
    return 0


def class_folder(cifar: Path, images: int, out: Path) -> Path:
    """The first ``images`` CIFAR-10 training rows as PNGs in one subfolder per class."""
    if out.is_dir():
        return out
    train = load_cifar10(cifar).train
    for i in range(images):
        folder = out / train.class_names[int(train.labels[i])]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(train.images[i].numpy().transpose(1, 2, 0)).save(folder / f"{i:05d}.png")
    return out


def command_rows(args: argparse.Namespace) -> int:
    root = Path(args.runs) / time.strftime("%Y%m%d-%H%M%S")
    folder = class_folder(Path(args.cifar), args.images, root / "photos")
    defaults = {
        "today's default (native size, SCAN stage)": [],
        "the default before (64 px, k-means)": ["data.image_size=64", "stage=null"],
    } | {f"today's default with {row}": row.split() for row in args.rows}
    rows: dict[str, list[tuple[dict[str, float], float]]] = {}
    for seed in args.seeds:
        for number, (label, overrides) in enumerate(defaults.items()):
            out = root / f"row{number}-seed{seed}"

            def run(o=overrides, out=out) -> dict[str, float]:
                found = clusterclr.cluster(folder, 10, out=out, seed=seed, overrides=["train.progress=false", *o])  # noqa: B023
                return scores_against_folders(found)

            rows.setdefault(label, []).append(timed(run))
        latest(f"seed {seed}", rows)
    print(table(rows))
    setting = (f"`clusterclr cluster FOLDER --clusters 10` on the first {args.images} CIFAR-10 training images as PNGs "
               "(32 px) in class subfolders, scored against the subfolders; every other setting the command's default")
    append_result(args.results, "clusterclr cluster: today's default against the one before", setting, table(rows))
    return 0


def scores_against_folders(found: clusterclr.Clusters) -> dict[str, float]:
    """NMI, ACC and ARI of the clusters against the images' class subfolders."""
    labels = [Path(p).parent.name for p in found.paths]
    classes = {c: i for i, c in enumerate(sorted(set(labels)))}
    return clustering_scores(np.array([classes[c] for c in labels]), found.cluster)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parts = parser.add_subparsers(dest="part", required=True)
    stage = parts.add_parser("stage", help="k-means against the clustering stage on a preset's features")
    stage.add_argument("--config", required=True)
    stage.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE")
    stage.add_argument("--e2e-epochs", type=int, default=30)
    stage.add_argument("--self-label-epochs", type=int, default=10)
    command = parts.add_parser("command", help="clusterclr cluster's default against the one before")
    command.add_argument("--cifar", required=True, help="the cifar-10-batches-py directory")
    command.add_argument("--images", type=int, default=1000)
    command.add_argument("--row", dest="rows", action="append", default=[], metavar="'KEY=VALUE ...'",
                         help="also today's default with these settings (repeatable)")
    for part in (stage, command):
        part.add_argument("--seeds", nargs="+", type=int, default=[0])
        part.add_argument("--runs", default="runs/benchmarks")
    sweep = parts.add_parser("sweep", help="the frozen stage's settings on trained runs")
    sweep.add_argument("run_dirs", nargs="+", help="trained runs, one per seed")
    sweep.add_argument("--variant", dest="variants", action="append", default=[], metavar="'KEY=VALUE ...'",
                       help="a row with these stage settings (repeatable)")
    sweep.add_argument("--e2e-epochs", type=int, default=0, help="also SCAN end to end for this many epochs (0: not)")
    sweep.add_argument("--self-label-epochs", type=int, default=10)
    sweep.add_argument("--runs", default="runs/benchmarks", help="where the end-to-end runs go")
    for part in (stage, command, sweep):
        part.add_argument("--results", default="BENCHMARKS.md")
    args = parser.parse_args()
    return {"stage": stage_rows, "command": command_rows, "sweep": sweep_rows}[args.part](args)


if __name__ == "__main__":
    raise SystemExit(main())
