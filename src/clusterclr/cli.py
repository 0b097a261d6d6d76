"""The ``clusterclr`` command line: train, evaluate, embed, export, report, cluster, assign, prepare, methods, datasets.

A thin layer over the Python API (``clusterclr.api``) and ``commands/``:
each handler parses, calls, and prints. Modules load inside the handlers,
so ``clusterclr methods`` does not pay for matplotlib.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any

from clusterclr.arguments import build_parser
from clusterclr.errors import Interrupted, OutputError, UserError
from clusterclr.pathtext import path_text


def _train(args: argparse.Namespace) -> int:
    from clusterclr import api, distributed
    from clusterclr.commands.train import run_to_resume
    from clusterclr.configure import build_config
    from clusterclr.rundir import RunDir
    from clusterclr.training.budget import check_budget

    flags = _train_flags(args)
    check_budget(args.minutes, args.epochs)
    if args.minutes is not None and args.resume:
        raise UserError("--minutes sets a new run's training budget; --resume continues a run on its saved one: drop --minutes")
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
                print(f"resuming {path_text(run_dir.path)}", file=sys.stderr)
            run = api.resume(run_dir)
        else:
            config = build_config(args.config, flags, args.overrides)
            # rank 0's clock names the run, for every rank
            run_dir = RunDir(args.out) if args.out else distributed.on_main_then_broadcast(
                RunDir.new_name, config.method.name, config.data.dataset
            )
            if main:
                processes = f" ({distributed.world_size()} processes)" if distributed.world_size() > 1 else ""
                print(f"training {config.method.name} on {config.data.dataset}{processes} -> {path_text(run_dir.path)}", file=sys.stderr)
            run = api.train(config, out=run_dir, minutes=args.minutes)
        if main:
            print(metrics_table(run.metrics))
            print(f"run directory: {path_text(run_dir.path)}")
            _print_report_path(run_dir)
    return 0


def _print_report_path(run_dir) -> None:
    if run_dir.report.is_file():
        print(f"report: {path_text(run_dir.report)}")


def _list_skipped(skipped) -> None:
    """Unusable image files left out, with why: one ``path<TAB>reason`` line each, as in skipped_files.txt."""
    if skipped:
        lines = "".join(f"\n  {bad.line()}" for bad in skipped)
        print(f"clusterclr: warning: skipped {len(skipped)} unusable image file(s):{lines}", file=sys.stderr)


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

    run = api.Run(args.run_dir)
    if not args.protocol:
        given = given_protocol_flags(args)
        if given:
            raise UserError(f"{given[0]} is an option of --protocol; name the protocols to run")
        print(f"evaluating {path_text(run.directory.path)} at epoch {run.epoch}/{run.config.train.epochs}", file=sys.stderr)
        print(metrics_table(run.evaluate()))
        return 0
    names = list(dict.fromkeys(args.protocol))
    options = protocol_options(args, names)
    seeds = checked_seeds(args.seeds)
    print(f"evaluating {path_text(run.directory.path)}: {', '.join(names)} (seeds {' '.join(map(str, seeds))})", file=sys.stderr)
    print(results_table(run.evaluate(names, seeds, options)))
    print(f"results merged into {path_text(run.directory.metrics)}")
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
    rows = embed_to_files(model, dataset, root, args.split, out, args.clusters, args.skip_bad)
    _list_skipped(rows.skipped)
    print(f"wrote {rows.features} embeddings to {path_text(out)} and {rows.clusters}-means clusters to {path_text(rows.csv)}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from clusterclr import api
    from clusterclr.export import preprocessing_path

    run = api.load(args.run_dir)
    out = run.export(args.out, args.format)
    print(f"wrote the {run.config.method.name} encoder (epoch {run.epoch}) to {path_text(out)} and its preprocessing to {path_text(preprocessing_path(out))}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from clusterclr import api

    run = api.Run(args.run_dir)
    print(f"reporting {path_text(run.directory.path)} at epoch {run.epoch}", file=sys.stderr)
    print(f"report: {path_text(run.report())}")
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
        print(f"finishing the cluster run in {path_text(args.resume)}", file=sys.stderr)
        result = api.finish_cluster(args.resume, args.copy_to)
    else:
        if args.folder is None or args.clusters is None:
            raise UserError("give the image FOLDER and --clusters K (or --resume RUN_DIR to finish an interrupted run)")
        folder = Path(args.folder)
        out = RunDir(args.out) if args.out else RunDir.new_name("cluster", folder.absolute().name)
        clusters = args.clusters if args.clusters == "auto" else _positive_int(args.clusters)
        print(f"clustering {path_text(folder)} into {args.clusters} clusters -> {path_text(out.path)}", file=sys.stderr)
        result = api.cluster(
            folder, clusters, out=out, method=args.method, init=args.init, weights=args.weights, epochs=args.epochs,
            minutes=args.minutes, copy_to=args.copy_to, config=args.config, seed=args.seed, overrides=args.overrides,
        )
    sizes = result.sizes()
    run_dir = result.run.directory
    print(f"{len(result.paths)} images in {len(sizes)} clusters by {result.by}; sizes: {' '.join(map(str, sizes))}")
    if result.skipped:
        print(f"skipped {len(result.skipped)} unusable image file(s), listed with why in {path_text(run_dir.skipped_files)}")
    print(f"clusters: {path_text(run_dir.clusters_csv)}")
    print(f"report: {path_text(run_dir.report)}")
    if args.copy_to is not None:
        print(f"copies: {path_text(args.copy_to)}/cluster_*/")
    return 0


def _stage(args: argparse.Namespace) -> int:
    from clusterclr import api
    from clusterclr.commands.stage import parse_stage_overrides

    if args.end_to_end or args.epochs is not None or args.self_label_epochs or args.out:
        return _stage_end_to_end(args)
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
    print(metrics_table(metrics))
    stage = run.stage_summary()
    print(f"stage: {stage}")
    return 0


def _stage_end_to_end(args: argparse.Namespace) -> int:
    from clusterclr import api
    from clusterclr.commands.stage import parse_stage_overrides

    if not args.end_to_end:
        raise UserError("--epochs, --self-label-epochs and --out belong to --end-to-end")
    if args.run_dir is None or args.resume:
        raise UserError("--end-to-end trains a new run from RUN_DIR (continue an interrupted one with clusterclr train --resume)")
    run = api.Run(args.run_dir)
    out = args.out or f"{run.directory.path}-scan"
    clusters = None if args.clusters is None else _positive_int(args.clusters)
    print(f"fine-tuning {run.directory} end to end with SCAN cluster heads -> {out}", file=sys.stderr)
    tuned = run.fit_stage_end_to_end(out, args.epochs or 50, args.self_label_epochs or 0, clusters, parse_stage_overrides(args.overrides))
    print(metrics_table(tuned.metrics))
    print(f"run directory: {out}")
    _print_report_path(tuned.directory)
    return 0


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"--clusters takes a positive number or auto, got {text!r}")
    return int(text)


def _assign(args: argparse.Namespace) -> int:
    from clusterclr import api
    from clusterclr.io import write_text

    found = api.load(args.run_dir).assign(args.images, skip_bad=args.skip_bad)
    _list_skipped(found.skipped)
    table = found.csv()
    if args.out:
        print(f"assigned {len(found.paths)} images by {found.by} -> {path_text(write_text(args.out, table))}", file=sys.stderr)
    else:
        sys.stdout.write(table)
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from clusterclr import api

    index = api.prepare(args.folder, args.out, args.size)
    images = sum(shard["nsamples"] for shard in index["shardlist"])
    print(f"wrote {images} images in {len(index['shardlist'])} shards to {args.out}; "
          f"train on them with --dataset shards --data-root {args.out}")
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
    from clusterclr.evaluate.standard import HEADLINE_KEYS

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


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # Users act on the message; the library's file and line number are noise to them.
    print(f"clusterclr: warning: {message}", file=sys.stderr)


def _resumable(args: argparse.Namespace) -> str:
    """The command that continues an interrupted ``args``: ``cluster`` runs finish with their clusters, stages with their head."""
    return args.command if args.command in ("cluster", "stage") else "train"


HANDLERS = {
    "train": _train, "evaluate": _evaluate, "embed": _embed, "export": _export, "report": _report,
    "cluster": _cluster, "stage": _stage, "assign": _assign, "prepare": _prepare, "methods": _methods, "datasets": _datasets,
}


def _resume_command(args: argparse.Namespace, run_dir) -> str:
    """The command line that continues the run of ``args`` in ``run_dir``, or writes a finished run's outputs again."""
    command = f"clusterclr {_resumable(args)} --resume {shlex.quote(path_text(run_dir))}"
    if args.command == "cluster" and args.copy_to is not None:
        command += f" --copy-to {shlex.quote(path_text(args.copy_to))}"
    return command


def _one_line(err: Exception) -> str:
    # One line even when the message quotes input that holds line breaks.
    return " ".join(str(err).splitlines())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        return HANDLERS[args.command](args)
    except OutputError as err:
        print(f"clusterclr: error: {_one_line(err)}; write the outputs again with: {_resume_command(args, err.run_dir)}",
              file=sys.stderr)
        return 2
    except UserError as err:
        print(f"clusterclr: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except FloatingPointError as err:
        print(f"clusterclr: training diverged: {err}", file=sys.stderr)
        return 1
    except Interrupted as err:
        from clusterclr import distributed

        if distributed.is_main():  # every process of a torchrun run stops at the same step; one says so
            print(f"clusterclr: {err}; continue with: {_resume_command(args, err.run_dir)}", file=sys.stderr)
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
