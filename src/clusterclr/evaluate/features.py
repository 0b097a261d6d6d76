"""Frozen features (and cluster-head assignments) of a whole data set, as every evaluation computes them.

Batched (``eval.batch_size``), in the run's precision (bf16 autocast where the
device computes it natively: ``build.select_precision``), with a progress bar
for extractions that take a while.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

from clusterclr.build import Model
from clusterclr.data.base import ImageDataset
from clusterclr.data.loading import image_batches
from clusterclr.progress import progress_bar


@dataclass
class Embeddings:
    features: torch.Tensor  # N × D float32 on the CPU, not normalised
    cluster_probabilities: torch.Tensor | None  # N × K, for models with a cluster head (a method's, or a stage's)
    # Rows of a streamed data set whose file could not be read (``data.skip_bad``): their rows hold a
    # stand-in's features (the next readable image), to be left out (``select``).
    skipped: tuple[int, ...] = ()

    def select(self, rows: torch.Tensor) -> Embeddings:
        """These embeddings at ``rows`` only."""
        probabilities = self.cluster_probabilities
        return Embeddings(self.features[rows], None if probabilities is None else probabilities[rows])


@contextmanager
def _evaluating(model: Model, total: int) -> Iterator[tuple[nullcontext | torch.autocast, object]]:
    """The method in eval mode (restored after), the run's autocast, and a progress bar over ``total`` images, shown
    only when the pass takes a while (a large ViT on a CPU): rate and time left."""
    method, cfg = model.method, model.config
    was_training = method.training
    method.eval()
    dtype = model.autocast_dtype
    autocast = torch.autocast(model.device.type, dtype=dtype) if dtype else nullcontext()
    bar = progress_bar(total=total, enabled=cfg.train.progress, desc="features", unit="image", delay=2, leave=False)
    try:
        yield autocast, bar
    finally:
        bar.close()
        method.train(was_training)


@torch.no_grad()
def embed(model: Model, dataset: ImageDataset) -> Embeddings:
    """The backbone features of ``dataset``'s clean views, in eval mode, batched as ``eval.batch_size``
    (a streamed data set is decoded by DataLoader workers as the pass goes)."""
    cfg = model.config
    features, probabilities, skipped = [], [], []
    with _evaluating(model, len(dataset)) as (autocast, bar):
        for x, bad in model.views.clean_batches(dataset.images, cfg.eval.batch_size, model.device):
            skipped += [b.row for b in bad]
            with autocast:
                h = model.method.embed(x)
                p = model.cluster_probabilities(h)
            features.append(h.float().cpu())
            if p is not None:
                probabilities.append(p.float().cpu())
            bar.update(len(x))
    return Embeddings(torch.cat(features), torch.cat(probabilities) if probabilities else None, tuple(sorted(set(skipped))))


@torch.no_grad()
def view_averaged_features(model: Model, dataset: ImageDataset, views: int, seed: int) -> torch.Tensor:
    """Each image's backbone features averaged over its clean view and ``views`` augmented ones (the run's
    training recipe, applied to the clean image), N × D float32 on the CPU.

    The average keeps what the training made the features invariant to and smooths what one view happens
    to show; the clustering stage's neighbours mined on it helped on the CIFAR-10 subset (BENCHMARKS.md,
    ``stage.mining_views``). The views are drawn from ``seed`` with the global random state left as it
    was, so the same call gives the same features (a resumed stage mines the same neighbours).
    Unreadable files of a streamed set hold their stand-ins' features, as in :func:`embed`.
    """
    cfg = model.config
    chunks = torch.arange(len(dataset)).split(cfg.eval.batch_size)
    features = []
    cuda = [model.device] if model.device.type == "cuda" else []
    with _evaluating(model, len(dataset)) as (autocast, bar), torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        for pixels, _ in image_batches(dataset.images, chunks, pin=bool(cuda), judge=False):
            pixels = pixels.to(model.device, non_blocking=True)
            total = None
            for x in [model.views.clean(pixels), *model.views(pixels, views)]:
                with autocast:
                    h = model.method.embed(x).float()
                total = h if total is None else total + h
            features.append((total / (views + 1)).cpu())
            bar.update(len(pixels))
    return torch.cat(features)
