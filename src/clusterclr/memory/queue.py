"""MoCo's queue: the most recent keys, used as negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KeyQueue(nn.Module):
    """A first-in first-out ring of ``size`` L2-normalised keys.

    Starts empty (no random placeholder negatives); ``keys()`` returns only
    the filled part. ``enqueue`` overwrites the oldest entries first and
    accepts any batch size, including one larger than the queue. Buffers
    are saved in checkpoints, so a resumed run sees the same negatives.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1:
            raise ValueError("a queue needs at least one slot")
        self.register_buffer("buffer", torch.zeros(size, dim))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.buffer.shape[0]

    def keys(self) -> torch.Tensor:
        return self.buffer[: int(self.filled)]

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        keys = F.normalize(keys.detach().float(), dim=1)[-self.size :]
        n, start = len(keys), int(self.pointer)
        slots = (start + torch.arange(n, device=keys.device)) % self.size
        self.buffer[slots] = keys
        self.pointer.fill_((start + n) % self.size)
        self.filled.fill_(min(int(self.filled) + n, self.size))
