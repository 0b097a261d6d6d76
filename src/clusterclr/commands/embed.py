"""``clusterclr embed``: embeddings and cluster assignments of a data set, written for people and other tools."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clusterclr.build import Model
from clusterclr.commands.assign import SKIP_FLAG
from clusterclr.configure import resolve_clusters
from clusterclr.data.base import BadFile, ImageDataset, concat
from clusterclr.data.registry import load_raw
from clusterclr.data.splits import resize, with_channels
from clusterclr.errors import UserError
from clusterclr.evaluate.context import EvalContext
from clusterclr.io import atomic_write, write_text
from clusterclr.pathtext import path_text

SPLITS = ("train", "test", "unlabeled")


@dataclass
class Written:
    features: str  # "N×D"
    clusters: int
    csv: Path
    skipped: tuple[BadFile, ...]  # unusable image files left out (skip_bad)


def _chosen_splits(
    dataset: str, root: str | None, split: str, model: Model, skip_bad: bool
) -> tuple[list[tuple[str, ImageDataset]], tuple[BadFile, ...]]:
    """The requested splits in file order, at the resolution and channels the model was trained on,
    and the image files left out as unusable."""
    height, width = model.method.data.image_size
    # A set too large for memory is streamed, as the run's data settings say.
    data = model.config.data
    raw = load_raw(dataset, root, height if height == width else None, skip_bad, data.stream, data.memory_limit, data.workers,
                   skip_hint=SKIP_FLAG)
    available = {"train": raw.train, "test": raw.test, "unlabeled": raw.unlabeled}
    names = SPLITS if split == "all" else (split,)
    chosen = [(name, available[name]) for name in names if available[name] is not None]
    if not chosen:
        raise UserError(f"data set '{dataset}' has no {split} split")
    channels = model.method.data.channels
    for name, part in chosen:
        # A run that converted its own images (data.channels) converts these the same way.
        if part.channels != channels and model.config.data.channels != channels:
            raise UserError(f"the run was trained on {channels}-channel images; {dataset} {name} has {part.channels}")
    chosen = [(name, with_channels(part, channels)[0]) for name, part in chosen]
    if height == width:
        chosen = [(name, resize(part, height)) for name, part in chosen]
    return chosen, raw.bad_files


def embed_to_files(
    model: Model, dataset: str, root: str | None, split: str, out: Path, clusters: int | None, skip_bad: bool | None = None
) -> Written:
    """Write ``out`` (.npy, N × D float32 backbone features) and a CSV beside it.

    CSV columns: split, index (the row within that split, in file order),
    source (file path, for folders, as ``path_text`` writes it), label (if
    known), cluster (k-means on the L2-normalised features), and, for methods
    with a cluster head, head_cluster and head_confidence. An unusable image
    file is an error naming it unless ``skip_bad`` (by default: whether the
    run was trained with ``data.skip_bad``); then it has no row and is listed
    in ``Written.skipped``.
    """
    if skip_bad is None:
        skip_bad = model.config.data.skip_bad
    chosen, skipped = _chosen_splits(dataset, root, split, model, skip_bad)
    data = concat([part for _, part in chosen])
    k = resolve_clusters(
        clusters if clusters is not None else model.clusters,
        model.method.data.num_classes,
        len(data),
        f"the {len(data)} images to embed",
    )
    ctx = EvalContext(model, dataset, data, data, split, k, progress=False)
    embeddings = ctx.embeddings("bank")  # streamed files found unreadable (data.skip_bad) are left out
    kept = set(range(len(data))) - set(ctx.left_out["bank"])
    assignments = ctx.kmeans(k, model.config.seed).assignments
    features = embeddings.features.numpy().astype(np.float32)
    atomic_write(out, lambda f: np.save(f, features))

    probabilities = embeddings.cluster_probabilities
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["split", "index", "source", "label", "cluster"] + (["head_cluster", "head_confidence"] if probabilities is not None else []))
    row, read = 0, -1
    for name, part in chosen:
        for i in range(len(part)):
            read += 1
            if read not in kept:
                continue
            fields = [
                name,
                i,
                "" if part.sources is None else path_text(part.sources[i]),
                "" if part.labels is None else int(part.labels[i]),
                int(assignments[row]),
            ]
            if probabilities is not None:
                confidence, cluster = probabilities[row].max(0)
                fields += [int(cluster), f"{float(confidence):.4f}"]
            writer.writerow(fields)
            row += 1
    csv_path = write_text(out.with_suffix(".csv"), buffer.getvalue())
    return Written(f"{features.shape[0]}×{features.shape[1]}", k, csv_path, skipped)
