"""Frozen features (and cluster-head assignments) of a whole split."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from clusterclr.augment import ViewMaker
from clusterclr.data.base import ImageDataset
from clusterclr.methods.base import Method


@dataclass
class Embeddings:
    features: torch.Tensor  # N × D float32 on the CPU, not normalised
    cluster_probabilities: torch.Tensor | None  # N × K, for methods with a cluster head


@torch.no_grad()
def embed_dataset(
    method: Method,
    views: ViewMaker,
    dataset: ImageDataset,
    device: torch.device,
    batch_size: int,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> Embeddings:
    was_training = method.training
    method.eval()
    features, probabilities = [], []
    autocast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    try:
        for x in views.clean_batches(dataset.images, batch_size, device, channels_last):
            with autocast:
                h = method.embed(x)
                p = method.cluster_probabilities(h)
            features.append(h.float().cpu())
            if p is not None:
                probabilities.append(p.float().cpu())
    finally:
        method.train(was_training)
    return Embeddings(torch.cat(features), torch.cat(probabilities) if probabilities else None)
