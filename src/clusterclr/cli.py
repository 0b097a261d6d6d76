"""The ``clusterclr`` command line: train, evaluate, embed, export, report, cluster, assign, methods, datasets.

A thin layer over the Python API (``clusterclr.api``) and ``commands/``:
each handler parses, calls, and prints. Modules load inside the handlers,
so ``clusterclr methods`` does not pay for matplotlib.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any

from clusterclr.errors import Interrupted, UserError


def _train(args: argparse.Namespace) -> int:
    from clusterclr import api, distributed
    from clusterclr.commands.train import run_to_resume
    from clusterclr.configure import build_config
    from clusterclr.evaluate.standard import headline_table
    from clusterclr.rundir import RunDir

    flags = _train_flags(args)
    configured = bool(args.config or args.overrides or any(v is not None for v in flags.values()))
    with distributed.process_group():
        run_dir = None
        if args.resume:
            run_dir = distributed.on_main_then_broadcast(
                run_to_resume, args.resume, args.out, configured, lambda: build_config(args.config, flags, args.overrides)
            )
        main = distributed.is_main()
        if run_dir is not None:
            if main:
                print(f"resuming {run_dir}", file=sys.stderr)
            run = api.resume(run_dir)
        else:
            config = build_config(args.config, flags, args.overrides)
            # rank 0's clock names the run, for every rank
            run_dir = RunDir(args.out) if args.out else distributed.on_main_then_broadcast(
                RunDir.new_name, config.method.name, config.data.dataset
            )
            if main:
                processes = f" ({distributed.world_size()} processes)" if distributed.world_size() > 1 else ""
                print(f"training {config.method.name} on {config.data.dataset}{processes} -> {run_dir}", file=sys.stderr)
            run = api.train(config, out=run_dir)
        if main:
            print(headline_table(run.metrics))
            print(f"run directory: {run_dir}")
            _print_report_path(run_dir)
    return 0


def _print_report_path(run_dir) -> None:
    if run_dir.report.is_file():
        print(f"report: {run_dir.report}")


def _train_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "method.name": args.method,
        "data.dataset": args.dataset,
        "data.root": args.data_root,
        "train.epochs": args.epochs,
        "seed": args.seed,
    }


def _evaluate(args: argparse.Namespace) -> int:
    from clusterclr import api
    from clusterclr.commands.evaluate import (
        checked_seeds,
        given_protocol_flags,
        protocol_options,
    )
    from clusterclr.evaluate.results import results_table
    from clusterclr.evaluate.standard import headline_table

    run = api.Run(args.run_dir)
    if not args.protocol:
        given = given_protocol_flags(args)
        if given:
            raise UserError(f"{given[0]} is an option of --protocol; name the protocols to run")
        print(f"evaluating {run.directory} at epoch {run.epoch}/{run.config.train.epochs}", file=sys.stderr)
        print(headline_table(run.evaluate()))
        return 0
    names = list(dict.fromkeys(args.protocol))
    options = protocol_options(args, names)
    seeds = checked_seeds(args.seeds)
    print(f"evaluating {run.directory}: {', '.join(names)} (seeds {' '.join(map(str, seeds))})", file=sys.stderr)
    print(results_table(run.evaluate(names, seeds, options)))
    print(f"results merged into {run.directory.metrics}")
    return 0


def _embed(args: argparse.Namespace) -> int:
    from clusterclr import api
    from clusterclr.commands.embed import embed_to_files

    out = Path(args.out)
    if out.suffix != ".npy":
        raise UserError(f"--out must name a .npy file, got {out}")
    if args.data_root and not args.dataset:
        raise UserError("--data-root needs --dataset (without it the run's own data set is embedded)")
    model = api.load(args.run_dir).model
    dataset = args.dataset or model.config.data.dataset
    root = args.data_root if args.dataset else model.config.data.root
    rows = embed_to_files(model, dataset, root, args.split, out, args.clusters)
    print(f"wrote {rows.features} embeddings to {out} and {rows.clusters}-means clusters to {rows.csv}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from clusterclr import api
    from clusterclr.export import preprocessing_path

    run = api.load(args.run_dir)
    out = run.export(args.out, args.format)
    print(f"wrote the {run.config.method.name} encoder (epoch {run.epoch}) to {out} and its preprocessing to {preprocessing_path(out)}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from clusterclr import api

    run = api.Run(args.run_dir)
    print(f"reporting {run.directory} at epoch {run.epoch}", file=sys.stderr)
    print(f"report: {run.report()}")
    return 0


def _cluster(args: argparse.Namespace) -> int:
    from clusterclr import api
    from clusterclr.rundir import RunDir

    if args.resume:
        given = [flag for flag, value in (("FOLDER", args.folder), ("--clusters", args.clusters), ("--method", args.method),
                 ("--init", args.init), ("--weights", args.weights), ("--epochs", args.epochs), ("--minutes", args.minutes),
                 ("--out", args.out), ("--config", args.config), ("--seed", args.seed), ("--set", args.overrides)) if value not in (None, [])]
        if given:
            raise UserError(f"--resume finishes a cluster run with its saved settings; drop {', '.join(given)} (only --copy-to may be added)")
        print(f"finishing the cluster run in {args.resume}", file=sys.stderr)
        result = api.finish_cluster(args.resume, args.copy_to)
    else:
        if args.folder is None or args.clusters is None:
            raise UserError("give the image FOLDER and --clusters K (or --resume RUN_DIR to finish an interrupted run)")
        folder = Path(args.folder)
        out = RunDir(args.out) if args.out else RunDir.new_name("cluster", folder.absolute().name)
        print(f"clustering {folder} into {args.clusters} clusters -> {out}", file=sys.stderr)
        clusters = args.clusters if args.clusters == "auto" else _positive_int(args.clusters)
        result = api.cluster(
            folder, clusters, out=out, method=args.method, init=args.init, weights=args.weights, epochs=args.epochs,
            minutes=args.minutes, copy_to=args.copy_to, config=args.config, seed=args.seed, overrides=args.overrides,
        )
    sizes = result.sizes()
    print(f"{len(result.paths)} images in {len(sizes)} clusters by {result.by}; sizes: {' '.join(map(str, sizes))}")
    print(f"clusters: {result.run.directory.clusters_csv}")
    print(f"report: {result.run.directory.report}")
    if args.copy_to is not None:
        print(f"copies: {Path(args.copy_to)}/cluster_*/")
    return 0


def _stage(args: argparse.Namespace) -> int:
    from clusterclr import api
    from clusterclr.commands.stage import parse_stage_overrides
    from clusterclr.evaluate.standard import headline_table

    if args.resume:
        if args.run_dir or args.clusters or args.overrides:
            raise UserError("--resume continues the saved stage with its own settings; drop RUN_DIR, --clusters and --set")
        run = api.Run(args.resume)
        print(f"continuing the clustering stage of {run.directory}", file=sys.stderr)
        metrics = run.fit_stage(resume=True)
    else:
        if args.run_dir is None:
            raise UserError("give the RUN_DIR to fit a clustering stage on (or --resume RUN_DIR)")
        run = api.Run(args.run_dir)
        clusters = None if args.clusters is None else args.clusters if args.clusters == "auto" else _positive_int(args.clusters)
        print(f"fitting a clustering stage on the features of {run.directory}", file=sys.stderr)
        metrics = run.fit_stage(clusters, parse_stage_overrides(args.overrides))
    print(headline_table(metrics))
    stage = run.stage_summary()
    print(f"stage: {stage}")
    return 0


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"--clusters takes a positive number or auto, got {text!r}")
    return int(text)


def _assign(args: argparse.Namespace) -> int:
    from clusterclr import api
    from clusterclr.io import write_text

    found = api.load(args.run_dir).assign(args.images)
    table = found.csv()
    if args.out:
        print(f"assigned {len(found.paths)} images by {found.by} -> {write_text(args.out, table)}", file=sys.stderr)
    else:
        sys.stdout.write(table)
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


def build_parser() -> argparse.ArgumentParser:
    from clusterclr.version import __version__

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
    train.add_argument("--resume", metavar="RUN_DIR",
                       help="continue an interrupted run from its newest checkpoint; 'auto': the run in --out if it "
                            "holds one (else start it), or without --out the newest run under runs/")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser(
        "evaluate", help="re-evaluate a run, or run evaluation protocols on it (--protocol)",
        description="Without --protocol: the run's standard evaluation (kNN, k-means, head), rewritten into "
                    "metrics.json. With --protocol: each protocol's scores (mean ± std over --seeds where the "
                    "seed matters) merged into metrics.json under its name.",
    )
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--protocol", nargs="+", choices=["knn", "linear", "kmeans", "head", "semi", "transfer"],
                          help="protocols to run, in order")
    evaluate.add_argument("--seeds", nargs="+", type=int, help="seeds for linear, kmeans, semi, transfer (default: 0)")
    evaluate.add_argument("--knn-k", nargs="+", type=int, help="kNN neighbours, one or more (default: the run's eval.knn_k)")
    evaluate.add_argument("--knn-temperature", type=float, help="kNN vote temperature (default: the run's eval.knn_temperature)")
    evaluate.add_argument("--clusters", nargs="+", type=int,
                          help="k-means K, one or more; K > classes is over-clustering (default: the run's)")
    evaluate.add_argument("--weight-decays", nargs="+", type=float, help="linear probe weight-decay sweep")
    evaluate.add_argument("--semi-fractions", nargs="+", type=float, help="labelled fractions (default: 0.01 0.1)")
    evaluate.add_argument("--semi-epochs", type=int, help="fine-tuning epochs over the labelled subset (default: 30)")
    evaluate.add_argument("--semi-lr", type=float, help="fine-tuning learning rate (default: 0.02)")
    evaluate.add_argument("--semi-batch-size", type=int, help="fine-tuning batch size (default: 32)")
    evaluate.add_argument("--data-config", help="transfer: YAML file whose data section is data set B")
    evaluate.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="data.KEY=VALUE",
                          help="transfer: data set B, e.g. --set data.dataset=cifar10 data.root=PATH")
    evaluate.set_defaults(handler=_evaluate)

    embed = commands.add_parser("embed", help="write embeddings (.npy) and k-means clusters (.csv) of a data set")
    embed.add_argument("run_dir")
    embed.add_argument("--dataset", help="data set to embed (default: the run's)")
    embed.add_argument("--data-root", help="where that data set's files are")
    embed.add_argument("--split", choices=["train", "test", "unlabeled", "all"], default="all",
                       help="which of the data set's own splits, in file order (default: all of them)")
    embed.add_argument("--clusters", type=int, help="k for k-means (default: the run's number of clusters)")
    embed.add_argument("--out", required=True, help="output FILE.npy; the CSV goes beside it")
    embed.set_defaults(handler=_embed)

    export = commands.add_parser(
        "export", help="write a run's encoder (backbone, plus cluster head) as safetensors, TorchScript or ONNX",
        description="Writes the encoder (normalised images -> features, and cluster probabilities for methods "
                    "with a cluster head) and, beside it, FILE.json (e.g. model.onnx.json) with the preprocessing it expects.",
    )
    export.add_argument("run_dir")
    export.add_argument("--format", choices=["safetensors", "torchscript", "onnx"], default="safetensors",
                        help="safetensors (default; tensors only), torchscript (.pt) or onnx (needs clusterclr[onnx])")
    export.add_argument("--out", required=True, help="output file: .safetensors, .pt or .onnx to match --format")
    export.set_defaults(handler=_export)

    report = commands.add_parser("report", help="write RUN_DIR/report.html: curves, embedding map, cluster galleries")
    report.add_argument("run_dir")
    report.set_defaults(handler=_report)

    cluster = commands.add_parser(
        "cluster", help="learn from a folder of images and group them: clusters.csv, embeddings, report"
    )
    cluster.add_argument("folder", nargs="?", help="folder of images (flat, or one subfolder per class)")
    cluster.add_argument("--clusters", metavar="K", help="number of clusters, or auto to choose it (required unless --resume)")
    cluster.add_argument("--method", help="registered method (default: simclr, with k-means on its features)")
    cluster.add_argument("--init", metavar="RUN_DIR", help="start from this run's trained backbone (fine-tune)")
    cluster.add_argument("--weights", metavar="FILE",
                         help="start from a pretrained backbone's weights file (ResNet, DINOv2, CLIP, ...; see README)")
    cluster.add_argument("--epochs", type=int,
                         help="training epochs (default: 100, or 0 with --weights; 0 clusters the initial features as they are)")
    cluster.add_argument("--minutes", type=float, help="train for as many epochs as fit in this many minutes here, instead of --epochs")
    cluster.add_argument("--out", help="run directory (default: runs/cluster-FOLDER-TIME)")
    cluster.add_argument("--copy-to", metavar="DIR", help="also copy the images into DIR/cluster_NN/ (originals untouched)")
    cluster.add_argument("--config", help="YAML config file; flags and --set override it")
    cluster.add_argument("--seed", type=int, help="random seed")
    cluster.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                         help="override any config key, e.g. --set data.image_size=96 optim.batch_size=128")
    cluster.add_argument("--resume", metavar="RUN_DIR",
                         help="finish an interrupted cluster run: continue its training, then write its clusters (only --copy-to may be added)")
    cluster.set_defaults(handler=_cluster)

    stage = commands.add_parser(
        "stage", help="fit a clustering stage (SCAN or TEMI cluster heads) on a trained run's features",
        description="Trains cluster heads on the frozen features of the run's training images so that each image and "
                    "its mined neighbours agree, keeps the lowest-loss head and saves it in the run: assign, embed, "
                    "export, the report and evaluate --protocol head then use it.",
    )
    stage.add_argument("run_dir", nargs="?")
    stage.add_argument("--clusters", metavar="K", help="clusters per head, or auto (default: stage.clusters, else the run's K)")
    stage.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="stage.KEY=VALUE",
                       help="stage settings, e.g. --set stage.loss=temi stage.epochs=50")
    stage.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted stage with its saved settings")
    stage.set_defaults(handler=_stage)

    assign = commands.add_parser("assign", help="assign new images to a run's clusters (CSV: path,cluster,confidence)")
    assign.add_argument("run_dir")
    assign.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    assign.add_argument("--out", help="write the CSV here (default: standard output)")
    assign.set_defaults(handler=_assign)

    commands.add_parser("methods", help="list the registered methods").set_defaults(handler=_methods)
    commands.add_parser("datasets", help="list the supported data sets").set_defaults(handler=_datasets)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # Users act on the message; the library's file and line number are noise to them.
    print(f"clusterclr: warning: {message}", file=sys.stderr)


def _resumable(args: argparse.Namespace) -> str:
    """The command that continues an interrupted ``args``: ``cluster`` runs finish with their clusters, stages with their head."""
    return args.command if args.command in ("cluster", "stage") else "train"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        return args.handler(args)
    except UserError as err:
        # One line even when the message quotes input that holds line breaks.
        print(f"clusterclr: error: {' '.join(str(err).splitlines())}", file=sys.stderr)
        return 2
    except FloatingPointError as err:
        print(f"clusterclr: training diverged: {err}", file=sys.stderr)
        return 1
    except Interrupted as err:
        from clusterclr import distributed

        if distributed.is_main():  # every process of a torchrun run stops at the same step; one says so
            print(f"clusterclr: {err}; continue with: clusterclr {_resumable(args)} --resume {err.run_dir}", file=sys.stderr)
        return err.exit_status
    except KeyboardInterrupt:
        print(
            f"\nclusterclr: aborted; a training run continues from its last checkpoint with `clusterclr {_resumable(args)} --resume RUN_DIR`",
            file=sys.stderr,
        )
        return 130
    except MemoryError:
        print(f"clusterclr: error: {_OUT_OF_MEMORY}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        # torch reports a failed allocation (CPU or GPU) as a RuntimeError; anything else is a bug.
        if not any(sign in str(err) for sign in ("out of memory", "not enough memory", "can't allocate memory")):
            raise
        print(f"clusterclr: error: {_OUT_OF_MEMORY} ({' '.join(str(err).split())[:150]})", file=sys.stderr)
        return 2


_OUT_OF_MEMORY = "out of memory; lower optim.batch_size, eval.batch_size, model.width or data.image_size"
