"""Frozen features (and cluster-head assignments) of a whole data set, as every evaluation computes them.

Batched (``eval.batch_size``), in the run's precision (bf16 autocast where the
device computes it natively: ``build.select_precision``), with a progress bar
for extractions that take a while.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from clusterclr.build import Model
from clusterclr.data.base import ImageDataset
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


@torch.no_grad()
def embed(model: Model, dataset: ImageDataset) -> Embeddings:
    """The backbone features of ``dataset``'s clean views, in eval mode, batched as ``eval.batch_size``
    (a streamed data set is decoded by DataLoader workers as the pass goes)."""
    method, cfg = model.method, model.config
    was_training = method.training
    method.eval()
    features, probabilities, skipped = [], [], []
    dtype = model.autocast_dtype
    autocast = torch.autocast(model.device.type, dtype=dtype) if dtype else nullcontext()
    # Shown only when extraction takes a while (a large ViT on a CPU): rate and time left.
    bar = progress_bar(total=len(dataset), enabled=cfg.train.progress, desc="features", unit="image", delay=2, leave=False)
    try:
        for x, bad in model.views.clean_batches(dataset.images, cfg.eval.batch_size, model.device, cfg.train.channels_last):
            skipped += [b.row for b in bad]
            with autocast:
                h = method.embed(x)
                p = model.cluster_probabilities(h)
            features.append(h.float().cpu())
            if p is not None:
                probabilities.append(p.float().cpu())
            bar.update(len(x))
    finally:
        bar.close()
        method.train(was_training)
    return Embeddings(torch.cat(features), torch.cat(probabilities) if probabilities else None, tuple(sorted(set(skipped))))
