"""Frozen features (and cluster-head assignments) of a whole data set, as every evaluation computes them."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from clusterclr.build import Model
from clusterclr.data.base import ImageDataset


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
    try:
        for x, bad in model.views.clean_batches(dataset.images, cfg.eval.batch_size, model.device, cfg.train.channels_last):
            skipped += [b.row for b in bad]
            with autocast:
                h = method.embed(x)
                p = model.cluster_probabilities(h)
            features.append(h.float().cpu())
            if p is not None:
                probabilities.append(p.float().cpu())
    finally:
        method.train(was_training)
    return Embeddings(torch.cat(features), torch.cat(probabilities) if probabilities else None, tuple(sorted(set(skipped))))
