"""How often the positives a method would draw from a trained model's features share the anchor's class.

Two kinds of inter-image positive, both read off one trained run's features
of the clean training images (labels serve only the scoring):

- mined partners (SePP, ``positives/semantic.py``): for each setting of the
  mining space, neighbours, mutual filter and similarity quantile, the
  number of pairs, the images left with a partner, the pairs' mean
  similarity and their precision (the fraction of one class);
- cluster mates (InterCLR, PCL): for each number of clusters, spherical
  k-means of the L2-normalised features, the images per cluster, the NMI
  of the clusters against the classes and the cluster-mate precision (the
  chance that another image drawn from one's cluster shares one's class,
  averaged over the images, as InterCLR's ``positive_precision`` logs it).

A fast diagnostic: no training, seconds per setting. Prints both tables
and appends them to BENCHMARKS.md.

    python benchmarks/positives.py runs/simclr --spaces raw centred whitened --quantiles 0 0.5 0.75 --clusters 10 50 200 500
    python benchmarks/positives.py runs/moco --features momentum --clusters 50 250 500
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch
from machine import append_result

from clusterclr.build import load_encoder, select_device
from clusterclr.clustering.kmeans import kmeans
from clusterclr.clustering.metrics import nmi
from clusterclr.data.splits import load_splits
from clusterclr.errors import UserError
from clusterclr.io import load_checkpoint
from clusterclr.methods.training_images import TrainingImages
from clusterclr.positives.semantic import mine_partners, pair_diagnostics
from clusterclr.rundir import RunDir

FEATURES = {
    "backbone": lambda m: (m.backbone, (m.backbone,)),
    "projector": lambda m: (lambda x: m.projector(m.backbone(x)), (m.backbone, m.projector)),
    # The momentum encoder of MoCo-style runs: its backbone, or backbone and projector (InterCLR's bank keys).
    "momentum-backbone": lambda m: (m.momentum_encoder.network[0], (m.momentum_encoder,)),
    "momentum": lambda m: (m.momentum_encoder, (m.momentum_encoder,)),
}


def cluster_mate_precision(clusters: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over images of P(another member of one's cluster shares one's label); an image alone counts 1."""
    pairs = clusters * (int(labels.max()) + 1) + labels
    same = torch.bincount(pairs)[pairs].double()  # members of one's cluster and class, oneself included
    size = torch.bincount(clusters)[clusters].double()
    return float(torch.where(size > 1, (same - 1) / (size - 1).clamp_min(1), torch.ones_like(size)).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a trained run directory, or one of its checkpoint files")
    parser.add_argument("--features", choices=sorted(FEATURES), default="backbone")
    parser.add_argument("--data-root", help="where the run's training data is, if not where it was")
    parser.add_argument("--spaces", nargs="+", default=["raw", "centred", "whitened"], choices=["raw", "centred", "whitened"])
    parser.add_argument("--neighbours", nargs="+", type=int, default=[1])
    parser.add_argument("--mutual", nargs="+", choices=["no", "yes"], default=["no", "yes"])
    parser.add_argument("--quantiles", nargs="+", type=float, default=[0.0, 0.5], help="0: no quantile filter")
    parser.add_argument("--clusters", nargs="*", type=int, default=[], help="k-means cluster counts for cluster mates")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", default="BENCHMARKS.md")
    args = parser.parse_args()
    try:
        return run(args)
    except UserError as err:
        parser.exit(2, f"positives.py: error: {err}\n")


def run(args: argparse.Namespace) -> int:
    path = Path(args.run)
    model = load_encoder(path, select_device("auto"))
    epoch = load_checkpoint(RunDir(path).checkpoint if path.is_dir() else path)["epoch"]
    data = model.config.data.model_copy(update={"root": args.data_root}) if args.data_root else model.config.data
    train = load_splits(data).train
    if train.labels is None:
        raise UserError("precision needs labels, and the run's training data has none")
    try:
        encoder, modules = FEATURES[args.features](model.method)
    except AttributeError:
        raise UserError(f"a {model.method.name} run has no {args.features} features") from None
    images = TrainingImages(train.images, train.labels, model.views, model.device, 512, model.autocast_dtype)
    features = images.encode(encoder, *modules).cpu()
    labels = train.labels.cpu()

    lines = ["| space | neighbours | mutual | quantile | pairs | images with partner | similarity | precision |",
             "|---|---|---|---|---|---|---|---|"]
    for space, k, mutual, q in itertools.product(args.spaces, args.neighbours, args.mutual, args.quantiles):
        pairs = mine_partners(features, k, space=space, mutual=mutual == "yes", quantile=q or None)
        d = pair_diagnostics(pairs, labels)
        similarity = "–" if d["pair_similarity"] is None else f"{d['pair_similarity']:.3f}"
        precision = "–" if d["pair_precision"] is None else f"{d['pair_precision']:.3f}"
        lines.append(f"| {space} | {k} | {mutual} | {q or '–'} | {d['pairs']} | {d['images_with_partner']} | {similarity} | {precision} |")
    tables = ["\n".join(lines)]
    if args.clusters:
        rows = ["| clusters | images per cluster | NMI | cluster-mate precision |", "|---|---|---|---|"]
        for k in args.clusters:
            fitted = kmeans(features, k, seed=args.seed, spherical=True)
            clusters = torch.from_numpy(fitted.assignments)
            score = nmi(labels.numpy(), fitted.assignments)
            rows.append(f"| {k} | {len(labels) / k:.0f} | {score:.3f} | {cluster_mate_precision(clusters, labels):.3f} |")
        tables.append("\n".join(rows))
    chance = float((torch.bincount(labels).double() / len(labels)).pow(2).sum())
    table = "\n\n".join(tables)
    print(table)
    append_result(
        args.results,
        f"positive precision: {model.method.name} run at epoch {epoch}, {args.features} features",
        f"{data.dataset}, {len(labels)} training images; chance precision (two random images of one class) {chance:.3f}",
        table,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
