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


@torch.no_grad()
def embed(model: Model, dataset: ImageDataset) -> Embeddings:
    """The backbone features of ``dataset``'s clean views, in eval mode, batched as ``eval.batch_size``."""
    method, cfg = model.method, model.config
    was_training = method.training
    method.eval()
    features, probabilities = [], []
    dtype = model.autocast_dtype
    autocast = torch.autocast(model.device.type, dtype=dtype) if dtype else nullcontext()
    try:
        for x in model.views.clean_batches(dataset.images, cfg.eval.batch_size, model.device, cfg.train.channels_last):
            with autocast:
                h = method.embed(x)
                p = model.cluster_probabilities(h)
            features.append(h.float().cpu())
            if p is not None:
                probabilities.append(p.float().cpu())
    finally:
        method.train(was_training)
    return Embeddings(torch.cat(features), torch.cat(probabilities) if probabilities else None)
