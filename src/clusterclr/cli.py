"""The ``clusterclr`` command line: train, evaluate, embed, export, report, cluster, assign, methods, datasets."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clusterclr.errors import Interrupted, UserError

if TYPE_CHECKING:
    from clusterclr.config import Config

RUNS = Path("runs")


def _train(args: argparse.Namespace) -> int:
    from clusterclr import distributed
    from clusterclr.config import build_config
    from clusterclr.train import resume_run, start_run

    with distributed.process_group():
        run_dir = distributed.on_main_then_broadcast(_run_to_resume, args) if args.resume else None
        main = distributed.is_main()
        if run_dir is not None:
            if main:
                print(f"resuming {run_dir}", file=sys.stderr)
            metrics = resume_run(run_dir)
        else:
            config = build_config(args.config, _train_flags(args), args.overrides)
            if args.out:
                run_dir = Path(args.out)
            else:  # rank 0's clock names the run, for every rank
                run_dir = distributed.on_main_then_broadcast(default_run_dir, config.method.name, config.data.dataset)
            if main:
                processes = f" ({distributed.world_size()} processes)" if distributed.world_size() > 1 else ""
                print(f"training {config.method.name} on {config.data.dataset}{processes} -> {run_dir}", file=sys.stderr)
            metrics = start_run(config, run_dir)
        if main:
            print(metrics_table(metrics))
            print(f"run directory: {run_dir}")
            _print_report_path(run_dir)
    return 0


def _print_report_path(run_dir: Path) -> None:
    from clusterclr.report.write import REPORT

    if (run_dir / REPORT).is_file():
        print(f"report: {run_dir / REPORT}")


def _run_to_resume(args: argparse.Namespace) -> Path | None:
    """The run ``--resume`` continues; None when ``--resume auto --out DIR`` finds no run there yet (start it).

    ``--resume RUN_DIR`` continues that run with its saved config.
    ``--resume auto --out DIR`` continues DIR if it holds a run, else starts
    one there from the other flags, so one command line serves every restart
    of a pre-emptible job; flags given must then match the saved config.
    ``--resume auto`` alone continues the run under runs/ with the newest checkpoint.
    """
    from clusterclr.build import CHECKPOINT
    from clusterclr.config import build_config
    from clusterclr.io import previous_checkpoint

    configured = bool(args.config or args.overrides or any(v is not None for v in _train_flags(args).values()))
    if args.resume != "auto":
        if configured or args.out:
            raise UserError("--resume continues a run in place with its saved config; drop --config, --out, --set and the other flags")
        return Path(args.resume)
    if not args.out:
        if configured:
            raise UserError(
                f"--resume auto without --out continues the newest run under {RUNS}/ with its saved config; "
                "drop --config, --set and the other flags, or name the run with --out"
            )
        return newest_run(RUNS)
    run_dir = Path(args.out)
    if not (run_dir / CHECKPOINT).exists() and not previous_checkpoint(run_dir / CHECKPOINT).exists():
        return None
    if configured:
        _check_same_config(build_config(args.config, _train_flags(args), args.overrides), run_dir)
    return run_dir


def newest_run(runs: Path) -> Path:
    """The run directory under ``runs`` whose checkpoint was written last."""
    checkpoints = list(runs.glob("*/checkpoints/*.pt")) if runs.is_dir() else []
    if not checkpoints:
        raise UserError(f"--resume auto found no run under {runs}/ to continue; name it with --resume RUN_DIR")
    return max(checkpoints, key=lambda path: path.stat().st_mtime).parents[1]


def _check_same_config(config: Config, run_dir: Path) -> None:
    from clusterclr.config import read_yaml, validate

    saved = validate(read_yaml(run_dir / "config.yaml"), source=f"{run_dir / 'config.yaml'}")
    different = _differences(saved.model_dump(mode="json"), config.model_dump(mode="json"))
    if different:
        raise UserError(
            f"{run_dir} holds a run with a different config ({', '.join(different[:5])}); "
            "give the flags it was started with, none at all, or another --out"
        )


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config trees."""
    different = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            different += _differences(x, y, f"{prefix}{key}.")
        elif x != y:
            different.append(f"{prefix}{key}")
    return different


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
    run_dir = Path(args.run_dir)
    if args.protocol:
        return _evaluate_protocols(run_dir, args)
    given = [flag for flag, dest, _ in [("--seeds", "seeds", ()), *_PROTOCOL_FLAGS] if getattr(args, dest) not in (None, [])]
    if given:
        raise UserError(f"{given[0]} is an option of --protocol; name the protocols to run")
    from clusterclr.train import finish, load_run

    parts, epoch = load_run(run_dir)
    print(f"evaluating {run_dir} at epoch {epoch}/{parts.config.train.epochs}", file=sys.stderr)
    print(metrics_table(finish(parts, run_dir, epoch)))
    return 0


# (flag, argparse dest, the protocols it applies to)
_PROTOCOL_FLAGS = [
    ("--knn-k", "knn_k", ("knn", "transfer")),
    ("--knn-temperature", "knn_temperature", ("knn", "transfer")),
    ("--clusters", "clusters", ("kmeans",)),
    ("--weight-decays", "weight_decays", ("linear", "transfer")),
    ("--semi-fractions", "semi_fractions", ("semi",)),
    ("--semi-epochs", "semi_epochs", ("semi",)),
    ("--semi-lr", "semi_lr", ("semi",)),
    ("--semi-batch-size", "semi_batch_size", ("semi",)),
    ("--data-config", "data_config", ("transfer",)),
    ("--set", "overrides", ("transfer",)),
]


def _evaluate_protocols(run_dir: Path, args: argparse.Namespace) -> int:
    from clusterclr.evaluate.protocols import evaluate_protocols
    from clusterclr.evaluate.results import results_table

    names = list(dict.fromkeys(args.protocol))
    options = _protocol_options(args, names)
    seeds = args.seeds or [0]
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise UserError(f"--seeds must be distinct non-negative integers, got {' '.join(map(str, seeds))}")
    print(f"evaluating {run_dir}: {', '.join(names)} (seeds {' '.join(map(str, seeds))})", file=sys.stderr)
    sections = evaluate_protocols(run_dir, names, seeds, options)
    print(results_table(sections))
    print(f"results merged into {run_dir / 'metrics.json'}")
    return 0


def _protocol_options(args: argparse.Namespace, names: list[str]):
    """The protocols' options from the flags, each checked here, before any data or model is loaded."""
    from clusterclr.evaluate.finetune import FinetuneOptions
    from clusterclr.evaluate.protocols.options import ProtocolOptions

    for flag, dest, protocols in _PROTOCOL_FLAGS:
        if getattr(args, dest) not in (None, []) and not set(protocols) & set(names):
            raise UserError(f"{flag} applies to --protocol {' or '.join(protocols)}, which is not being run")
    positive = {
        "--knn-k": args.knn_k, "--clusters": args.clusters, "--semi-epochs": args.semi_epochs,
        "--semi-batch-size": args.semi_batch_size, "--knn-temperature": args.knn_temperature,
        "--semi-lr": args.semi_lr, "--weight-decays": args.weight_decays,
    }
    for flag, value in positive.items():
        values = value if isinstance(value, list) else [value]
        if any(v is not None and not v > 0 for v in values):
            raise UserError(f"{flag} must be positive, got {' '.join(map(str, values))}")
    if args.semi_fractions and not all(0 < f <= 1 for f in args.semi_fractions):
        raise UserError(f"--semi-fractions must lie in (0, 1], e.g. 0.01 0.1; got {' '.join(map(str, args.semi_fractions))}")
    if args.semi_batch_size == 1:
        raise UserError("--semi-batch-size must be at least 2 (batch norm trains on batches)")
    defaults = FinetuneOptions()
    finetune = FinetuneOptions(
        epochs=args.semi_epochs or defaults.epochs,
        lr=args.semi_lr or defaults.lr,
        batch_size=args.semi_batch_size or defaults.batch_size,
    )
    given = {
        "knn_k": tuple(args.knn_k) if args.knn_k else None,
        "knn_temperature": args.knn_temperature,
        "clusters": tuple(args.clusters) if args.clusters else None,
        "weight_decays": tuple(args.weight_decays) if args.weight_decays else None,
        "semi_fractions": tuple(args.semi_fractions) if args.semi_fractions else None,
        "transfer_data": _transfer_data(args) if "transfer" in names else None,
    }
    return ProtocolOptions(finetune=finetune, **{key: value for key, value in given.items() if value is not None})


def _transfer_data(args: argparse.Namespace):
    """Data set B of --protocol transfer: the data section of --data-config, then --set data.KEY=VALUE."""
    from clusterclr.config import build_config

    if not args.data_config and not args.overrides:
        raise UserError("--protocol transfer needs data set B: --set data.dataset=NAME [data.root=PATH] or --data-config FILE")
    outside = [text for text in args.overrides if not text.startswith("data.")]
    if outside:
        raise UserError(f"--set here names data set B only (data.KEY=VALUE), got {outside[0]}")
    return build_config(args.data_config, None, args.overrides).data


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


def _export(args: argparse.Namespace) -> int:
    from clusterclr.build import load_model
    from clusterclr.export import export_model, preprocessing_path

    out = Path(args.out)
    model, epoch = load_model(Path(args.run_dir))
    export_model(model, epoch, args.format, out)
    print(f"wrote the {model.config.method.name} encoder (epoch {epoch}) to {out} and its preprocessing to {preprocessing_path(out)}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from clusterclr.report.run import report_run
    from clusterclr.train import load_run

    run_dir = Path(args.run_dir)
    parts, epoch = load_run(run_dir)
    print(f"reporting {run_dir} at epoch {epoch}", file=sys.stderr)
    print(f"report: {report_run(parts, run_dir, epoch)}")
    return 0


def _cluster(args: argparse.Namespace) -> int:
    from clusterclr.cluster_folder import ClusterRequest, cluster_folder, resume_cluster_folder

    copy_to = Path(args.copy_to) if args.copy_to else None
    if args.resume:
        given = [flag for flag, value in (("FOLDER", args.folder), ("--clusters", args.clusters), ("--method", args.method),
                 ("--init", args.init), ("--epochs", args.epochs), ("--out", args.out), ("--config", args.config),
                 ("--seed", args.seed), ("--set", args.overrides)) if value not in (None, [])]
        if given:
            raise UserError(f"--resume finishes a cluster run with its saved settings; drop {', '.join(given)} (only --copy-to may be added)")
        print(f"finishing the cluster run in {args.resume}", file=sys.stderr)
        result = resume_cluster_folder(Path(args.resume), copy_to)
    else:
        if args.folder is None or args.clusters is None:
            raise UserError("give the image FOLDER and --clusters K (or --resume RUN_DIR to finish an interrupted run)")
        folder = Path(args.folder)
        out = Path(args.out) if args.out else RUNS / f"cluster-{folder.absolute().name}-{time.strftime('%Y%m%d-%H%M%S')}"
        request = ClusterRequest(
            folder=folder,
            clusters=args.clusters,
            out=out,
            method=args.method,
            init=Path(args.init) if args.init else None,
            epochs=args.epochs,
            copy_to=copy_to,
            config_file=args.config,
            seed=args.seed,
            overrides=args.overrides,
        )
        print(f"clustering {folder} into {args.clusters} clusters -> {out}", file=sys.stderr)
        result = cluster_folder(request)
    sizes = result.assignments.sizes()
    print(f"{len(result.paths)} images in {len(sizes)} clusters by {result.assignments.by}; sizes: {' '.join(map(str, sizes))}")
    print(f"clusters: {result.csv}")
    print(f"report: {result.report}")
    if copy_to is not None:
        print(f"copies: {copy_to}/cluster_*/")
    return 0


def _assign(args: argparse.Namespace) -> int:
    from clusterclr.assign import assign_images
    from clusterclr.clustering.assignments import assignments_csv
    from clusterclr.io import write_text

    paths, assignments = assign_images(Path(args.run_dir), args.images)
    table = assignments_csv([str(p) for p in paths], assignments)
    if args.out:
        print(f"assigned {len(paths)} images by {assignments.by} -> {write_text(args.out, table)}", file=sys.stderr)
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
    embed.add_argument("--clusters", type=int, help="k for k-means (default: the run's number of classes or eval.clusters)")
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
    cluster.add_argument("--clusters", type=int, metavar="K", help="number of clusters (required unless --resume)")
    cluster.add_argument("--method", help="registered method (default: simclr, with k-means on its features)")
    cluster.add_argument("--init", metavar="RUN_DIR", help="start from this run's trained backbone (fine-tune)")
    cluster.add_argument("--epochs", type=int, help="training epochs (default: 100; 0 clusters --init's features as they are)")
    cluster.add_argument("--out", help="run directory (default: runs/cluster-FOLDER-TIME)")
    cluster.add_argument("--copy-to", metavar="DIR", help="also copy the images into DIR/cluster_NN/ (originals untouched)")
    cluster.add_argument("--config", help="YAML config file; flags and --set override it")
    cluster.add_argument("--seed", type=int, help="random seed")
    cluster.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                         help="override any config key, e.g. --set data.image_size=96 optim.batch_size=128")
    cluster.add_argument("--resume", metavar="RUN_DIR",
                         help="finish an interrupted cluster run: continue its training, then write its clusters (only --copy-to may be added)")
    cluster.set_defaults(handler=_cluster)

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
    """The command that continues an interrupted run of ``args``: ``cluster`` runs finish with their clusters."""
    return "cluster" if args.command == "cluster" else "train"


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
