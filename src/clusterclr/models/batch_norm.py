"""Batch norm for passes that are not ordinary training steps: which statistics normalise, and whether they are kept.

In training mode batch norm normalises with the batch's own statistics and
folds them into its running statistics; in eval mode it normalises with
the running statistics. A pass over clean (non-augmented) images inside a
training step, or over the whole training set between epochs, may want
either normalisation without its statistics leaking into the running ones
that evaluation uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@contextmanager
def batch_statistics_only(*modules: nn.Module) -> Iterator[None]:
    """Batch norm in ``modules`` normalises with each batch's statistics and leaves its running statistics untouched."""
    layers = _layers(modules)
    saved = [(m.training, m.track_running_stats) for m in layers]
    for m in layers:
        # Training mode without tracking: torch passes no running buffers to the kernel, so none change.
        m.train(True)
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, (training, tracking) in zip(layers, saved):
            m.train(training)
            m.track_running_stats = tracking


@contextmanager
def running_statistics(*modules: nn.Module) -> Iterator[None]:
    """Batch norm in ``modules`` normalises with its running statistics, as at evaluation, and leaves them untouched."""
    layers = _layers(modules)
    saved = [m.training for m in layers]
    for m in layers:
        m.train(False)
    try:
        yield
    finally:
        for m, training in zip(layers, saved):
            m.train(training)


def _layers(modules: tuple[nn.Module, ...]) -> list[_BatchNorm]:
    return [m for module in modules for m in module.modules() if isinstance(m, _BatchNorm)]
