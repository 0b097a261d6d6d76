"""The command line's arguments: one subparser per command (what each handler in ``cli.py`` receives)."""

from __future__ import annotations

import argparse

from clusterclr.version import __version__

DESCRIPTION = "Self-supervised image representations and clusters: train, evaluate, embed, export, report, cluster, stage, assign."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clusterclr", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"clusterclr {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a method (default: SimCLR on scikit-learn's digits)")
    train.add_argument("--config", help="YAML config file (see configs/)")
    train.add_argument("--method", help="registered method name (see `clusterclr methods`)")
    train.add_argument("--dataset", help="data set name (see `clusterclr datasets`)")
    train.add_argument("--data-root", help="where the data set's files are")
    train.add_argument("--epochs", type=int, help="number of training epochs")
    train.add_argument("--minutes", type=float, help="train for as many epochs as fit in this many minutes here, instead of --epochs")
    train.add_argument("--out", help="run directory (default: runs/METHOD-DATASET-TIME)")
    train.add_argument("--seed", type=int, help="random seed")
    train.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                       help="override any config key, e.g. --set optim.lr=0.1 method.temperature=0.2")
    train.add_argument("--resume", metavar="RUN_DIR",
                       help="continue an interrupted run from its newest checkpoint; 'auto': the run in --out if it "
                            "holds one (else start it), or without --out the newest run under runs/")

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

    embed = commands.add_parser("embed", help="write embeddings (.npy) and k-means clusters (.csv) of a data set")
    embed.add_argument("run_dir")
    embed.add_argument("--dataset", help="data set to embed (default: the run's)")
    embed.add_argument("--data-root", help="where that data set's files are")
    embed.add_argument("--split", choices=["train", "test", "unlabeled", "all"], default="all",
                       help="which of the data set's own splits, in file order (default: all of them)")
    embed.add_argument("--clusters", type=int, help="k for k-means (default: the run's number of clusters)")
    embed.add_argument("--out", required=True, help="output FILE.npy; the CSV goes beside it")
    embed.add_argument("--skip-bad", action=argparse.BooleanOptionalAction,
                       help="leave out image files that cannot be read, listing them and why (default: as the run was trained)")

    export = commands.add_parser(
        "export", help="write a run's encoder (backbone, plus cluster head) as safetensors, TorchScript or ONNX",
        description="Writes the encoder (normalised images -> features, and cluster probabilities for methods "
                    "with a cluster head) and, beside it, FILE.json (e.g. model.onnx.json) with the preprocessing it expects.",
    )
    export.add_argument("run_dir")
    export.add_argument("--format", choices=["safetensors", "torchscript", "onnx"], default="safetensors",
                        help="safetensors (default; tensors only), torchscript (.pt) or onnx (needs clusterclr[onnx])")
    export.add_argument("--out", required=True, help="output file: .safetensors, .pt or .onnx to match --format")

    report = commands.add_parser("report", help="write RUN_DIR/report.html: curves, embedding map, cluster galleries")
    report.add_argument("run_dir")

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
                         help="training epochs (default: 100, more for a small folder to see about 300,000 images, up to 300, and no "
                              "more than fit in 10 minutes here; 0 with --weights; 0 clusters the initial features as they are)")
    cluster.add_argument("--minutes", type=float, help="train for as many epochs as fit in this many minutes here, instead of --epochs")
    cluster.add_argument("--out", help="run directory (default: runs/cluster-FOLDER-TIME)")
    cluster.add_argument("--copy-to", metavar="DIR", help="also copy the images into DIR/cluster_NN/ (originals untouched)")
    cluster.add_argument("--config", help="YAML config file; flags and --set override it")
    cluster.add_argument("--seed", type=int, help="random seed")
    cluster.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                         help="override any config key, e.g. --set data.image_size=96 optim.batch_size=128")
    cluster.add_argument("--resume", metavar="RUN_DIR",
                         help="finish an interrupted cluster run: continue its training, then write its clusters; on a "
                              "finished run, write its outputs again without training (only --copy-to may be added)")

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
    stage.add_argument("--end-to-end", action="store_true",
                       help="fine-tune the backbone with the heads on augmented views (SCAN), as a new run in --out")
    stage.add_argument("--epochs", type=int, help="--end-to-end: clustering epochs (default: 50)")
    stage.add_argument("--self-label-epochs", type=int, help="--end-to-end: self-labelling epochs after them (default: 0)")
    stage.add_argument("--out", help="--end-to-end: the new run's directory (default: RUN_DIR-scan)")

    assign = commands.add_parser("assign", help="assign new images to a run's clusters (CSV: path,cluster,confidence)")
    assign.add_argument("run_dir")
    assign.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    assign.add_argument("--out", help="write the CSV here (default: standard output)")
    assign.add_argument("--skip-bad", action=argparse.BooleanOptionalAction,
                        help="leave out image files that cannot be read, listing them and why (default: as the run was trained)")

    prepare = commands.add_parser(
        "prepare", help="pack a folder of images into WebDataset tar shards (for clusters of machines)",
        description="Writes SHARDS/shard-NNNNNN.tar (each image's own bytes, its class and source path, WebDataset's "
                    "layout) and SHARDS/shards.json (a wids shard index). Train with --dataset shards --data-root SHARDS.",
    )
    prepare.add_argument("folder", help="folder of images (flat, or one subfolder per class)")
    prepare.add_argument("--out", required=True, metavar="SHARDS", help="new or empty folder for the shards")
    prepare.add_argument("--size", help="bytes per shard, e.g. 500MB or 2GiB (default: 1GiB)")

    commands.add_parser("methods", help="list the registered methods")
    commands.add_parser("datasets", help="list the supported data sets")
    return parser
