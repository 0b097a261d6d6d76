"""The ``clusterclr`` command line: train, evaluate, embed, methods, datasets."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from clusterclr.errors import UserError


def _train(args: argparse.Namespace) -> int:
    from clusterclr.config import build_config
    from clusterclr.train import resume_run, start_run

    if args.resume:
        given = [flag for flag, value in _train_flags(args).items() if value is not None]
        if args.config or given or args.overrides or args.out:
            raise UserError("--resume continues a run in place with its saved config; drop --config, --out, --set and the other flags")
        run_dir = Path(args.resume)
        print(f"resuming {run_dir}", file=sys.stderr)
        metrics = resume_run(run_dir)
    else:
        config = build_config(args.config, _train_flags(args), args.overrides)
        run_dir = Path(args.out) if args.out else default_run_dir(config.method.name, config.data.dataset)
        print(f"training {config.method.name} on {config.data.dataset} -> {run_dir}", file=sys.stderr)
        metrics = start_run(config, run_dir)
    print(metrics_table(metrics))
    print(f"run directory: {run_dir}")
    return 0


def _train_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "method.name": args.method,
        "data.dataset": args.dataset,
        "data.root": args.data_root,
        "train.epochs": args.epochs,
        "seed": args.seed,
    }


def default_run_dir(method: str, dataset: str) -> Path:
    return Path("runs") / f"{method}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


def _evaluate(args: argparse.Namespace) -> int:
    from clusterclr.train import finish, load_run

    run_dir = Path(args.run_dir)
    parts, epoch = load_run(run_dir)
    print(f"evaluating {run_dir} at epoch {epoch}/{parts.config.train.epochs}", file=sys.stderr)
    print(metrics_table(finish(parts, run_dir, epoch)))
    return 0


def _embed(args: argparse.Namespace) -> int:
    from clusterclr.build import load_model
    from clusterclr.evaluate.export import embed_to_files

    out = Path(args.out)
    if out.suffix != ".npy":
        raise UserError(f"--out must name a .npy file, got {out}")
    if args.data_root and not args.dataset:
        raise UserError("--data-root needs --dataset (without it the run's own data set is embedded)")
    model, _ = load_model(Path(args.run_dir))
    dataset = args.dataset or model.config.data.dataset
    root = args.data_root if args.dataset else model.config.data.root
    rows = embed_to_files(model, dataset, root, args.split, out, args.clusters)
    print(f"wrote {rows.features} embeddings to {out} and {rows.clusters}-means clusters to {rows.csv}")
    return 0


def _methods(args: argparse.Namespace) -> int:
    from clusterclr.methods.registry import method_summaries

    summaries = method_summaries()
    width = max(map(len, summaries))
    for name, summary in summaries.items():
        print(f"{name:<{width}}  {summary}")
    return 0


def _datasets(args: argparse.Namespace) -> int:
    from clusterclr.data.registry import DATASETS

    width = max(map(len, DATASETS))
    for name, spec in DATASETS.items():
        print(f"{name:<{width}}  {spec.description}")
    return 0


def metrics_table(metrics: dict[str, Any]) -> str:
    from clusterclr.evaluate.protocol import HEADLINE_KEYS

    rows = [(key, metrics[key]) for key in HEADLINE_KEYS if key in metrics]
    split = metrics.get("eval_split")
    title = f"{metrics.get('method', '')} on {metrics.get('dataset', '')}, epoch {metrics.get('epoch', '?')}"
    if split == "holdout":
        title += " (no test split: scores on a held-out part of train)"
    lines = [title, f"{'metric':<12} {'value':>7}", f"{'-' * 12} {'-' * 7}"]
    for key, value in rows:
        lines.append(f"{key:<12} {'n/a' if value is None else f'{value:.4f}':>7}")
    if metrics.get("knn_acc") is None:
        lines.append("(no labels: kNN and cluster scores need a labelled data set)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from clusterclr import __version__

    parser = argparse.ArgumentParser(prog="clusterclr", description=__doc__)
    parser.add_argument("--version", action="version", version=f"clusterclr {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a method (default: SimCLR on scikit-learn's digits)")
    train.add_argument("--config", help="YAML config file (see configs/)")
    train.add_argument("--method", help="registered method name (see `clusterclr methods`)")
    train.add_argument("--dataset", help="data set name (see `clusterclr datasets`)")
    train.add_argument("--data-root", help="where the data set's files are")
    train.add_argument("--epochs", type=int, help="number of training epochs")
    train.add_argument("--out", help="run directory (default: runs/METHOD-DATASET-TIME)")
    train.add_argument("--seed", type=int, help="random seed")
    train.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                       help="override any config key, e.g. --set optim.lr=0.1 method.temperature=0.2")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("evaluate", help="re-evaluate a finished or interrupted run")
    evaluate.add_argument("run_dir")
    evaluate.set_defaults(handler=_evaluate)

    embed = commands.add_parser("embed", help="write embeddings (.npy) and k-means clusters (.csv) of a data set")
    embed.add_argument("run_dir")
    embed.add_argument("--dataset", help="data set to embed (default: the run's)")
    embed.add_argument("--data-root", help="where that data set's files are")
    embed.add_argument("--split", choices=["train", "test", "unlabeled", "all"], default="all",
                       help="which of the data set's own splits, in file order (default: all of them)")
    embed.add_argument("--clusters", type=int, help="k for k-means (default: the run's number of classes or eval.clusters)")
    embed.add_argument("--out", required=True, help="output FILE.npy; the CSV goes beside it")
    embed.set_defaults(handler=_embed)

    commands.add_parser("methods", help="list the registered methods").set_defaults(handler=_methods)
    commands.add_parser("datasets", help="list the supported data sets").set_defaults(handler=_datasets)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # Users act on the message; the library's file and line number are noise to them.
    print(f"clusterclr: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        return args.handler(args)
    except UserError as err:
        print(f"clusterclr: error: {err}", file=sys.stderr)
        return 2
    except FloatingPointError as err:
        print(f"clusterclr: training diverged: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nclusterclr: interrupted; continue a training run with `clusterclr train --resume RUN_DIR`", file=sys.stderr)
        return 130
