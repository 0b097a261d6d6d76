"""A loss term switched on after a warm-up and ramped in over epochs (InterCLR's inter-image term, PCL's ProtoNCE).

Terms built on clusters of the model's own features pull on noise while
those features are young; a warm-up keeps them out, and a ramp lets them in
gradually rather than all at once when the clusters are first refitted.
"""

from __future__ import annotations

import torch
from torch import nn


class EpochRamp(nn.Module):
    """The fraction (0 to 1) of a term's weight at each epoch.

    0 for the first ``warmup`` epochs, then (e − ``warmup`` + 1) / ``ramp``
    until it reaches 1: full weight on the ``ramp``-th epoch after the
    warm-up, at once when ``ramp`` is 0 or 1. It is 0 until ``set_epoch``
    is first called, since the term's clusters are fitted at an epoch's
    start. The fraction is a buffer, since a run resumed mid-epoch skips
    ``on_epoch_start`` and reads it back from its checkpoint, with a
    host-side copy, so a step never waits on the device to read it.
    """

    def __init__(self, warmup: int, ramp: int) -> None:
        super().__init__()
        self.warmup, self.ramp = warmup, ramp
        self._fraction = 0.0
        self.register_buffer("fraction", torch.tensor(self._fraction))
        self.register_load_state_dict_post_hook(lambda module, _: setattr(module, "_fraction", float(module.fraction)))

    def at(self, epoch: int) -> float:
        if epoch < self.warmup:
            return 0.0
        return min(1.0, (epoch - self.warmup + 1) / max(self.ramp, 1))

    def set_epoch(self, epoch: int) -> float:
        """Move to ``epoch`` (0-based); returns its fraction."""
        self._fraction = self.at(epoch)
        self.fraction.fill_(self._fraction)
        return self._fraction

    @property
    def value(self) -> float:
        return self._fraction
