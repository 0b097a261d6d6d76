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
        # Host-side copies of (pointer, filled), so a step never waits on the device to read them.
        self._host: tuple[int, int] | None = None
        self.register_load_state_dict_post_hook(lambda module, _: setattr(module, "_host", None))

    @property
    def size(self) -> int:
        return self.buffer.shape[0]

    def _position(self) -> tuple[int, int]:
        if self._host is None:
            self._host = (int(self.pointer), int(self.filled))
        return self._host

    def keys(self) -> torch.Tensor:
        return self.buffer[: self._position()[1]]

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        keys = F.normalize(keys.detach().float(), dim=1)[-self.size :]
        (start, filled), n = self._position(), len(keys)
        slots = (start + torch.arange(n, device=keys.device)) % self.size
        self.buffer[slots] = keys
        self._host = ((start + n) % self.size, min(filled + n, self.size))
        self.pointer.fill_(self._host[0])
        self.filled.fill_(self._host[1])
