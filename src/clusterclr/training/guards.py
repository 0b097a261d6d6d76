"""What stops or warns a training run: signals, non-finite losses, collapse.

- SIGINT / SIGTERM ask the loop to stop (``StopRequest``): at the next step
  boundary it writes a mid-epoch checkpoint and raises ``Interrupted``. A
  second signal aborts at once.
- A non-finite loss stops the run (``FloatingPointError``) naming the step,
  the loss terms and the last good checkpoint (``LossGuard``). The loop
  checks it at logging steps and epoch ends, so the device is not made to
  wait every step, unless ``train.skip_nonfinite_steps`` > 0: then every
  step is checked, up to that many bad steps are skipped (no optimiser
  step, no state update), and one more stops the run.
- Outputs collapsed to one point (``output_std`` below ``COLLAPSED_STD``)
  are warned about once (``CollapseWatch``).
"""

from __future__ import annotations

import math
import signal
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

# Well-spread L2-normalised outputs have a per-dimension std of about 1/sqrt(dim), above 0.01 up
# to 10,000 dimensions; this far below it, every image maps to (nearly) the same point.
COLLAPSED_STD = 1e-3


class StopRequest:
    """A pending SIGINT/SIGTERM, set by the handlers ``listening`` installs and honoured by the loop."""

    def __init__(self) -> None:
        self.signal: int | None = None

    @contextmanager
    def listening(self) -> Iterator[None]:
        """While inside, SIGINT/SIGTERM ask for a checkpoint and a clean stop; a second one aborts at once."""
        if threading.current_thread() is not threading.main_thread():
            yield  # only the main thread may install handlers; elsewhere signals keep their defaults
            return

        def request_stop(signal_number: int, frame: Any) -> None:
            if self.signal is not None:
                raise KeyboardInterrupt
            self.signal = signal_number

        previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)


class LossGuard:
    """Refuses non-finite losses, or skips up to ``allowed`` of them; its messages name the last good checkpoint."""

    def __init__(self, allowed: int, skipped: int, last_good: Callable[[], str | None]) -> None:
        self.allowed = allowed
        self.skipped = skipped  # non-finite steps skipped so far in the run
        self.last_good = last_good

    @property
    def checks_every_step(self) -> bool:
        return self.allowed > 0

    def finite(self, loss: torch.Tensor, where: str, epoch: int, terms: dict[str, torch.Tensor] | None = None) -> float:
        value = float(loss)
        if not math.isfinite(value):
            raise FloatingPointError(self.divergence(f"loss became {value} {where}", epoch, terms))
        return value

    def skip(self, step: int, epoch: int, loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        """Count a non-finite step as skipped, or stop the run when it is one too many."""
        self.skipped += 1
        what = f"loss became {float(loss.detach())} at step {step + 1}"
        if self.skipped > self.allowed:
            raise FloatingPointError(
                self.divergence(f"{what}, non-finite step {self.skipped} (train.skip_nonfinite_steps={self.allowed})", epoch, terms)
            )
        warnings.warn(
            f"{what} (epoch {epoch + 1}; {describe(terms)}); step skipped, {self.skipped} of {self.allowed} allowed so far",
            stacklevel=2,
        )

    def divergence(self, what: str, epoch: int, terms: dict[str, torch.Tensor] | None) -> str:
        at = f"{what} (epoch {epoch + 1})"
        at += f"; loss terms: {describe(terms)}" if terms else "; set train.log_every=1 to find the step"
        return (
            f"{at}; the last good checkpoint is {self.last_good()}. Lower optim.lr, try train.precision=fp32, "
            f"or skip a few bad steps with --set train.skip_nonfinite_steps=N"
        )


class CollapseWatch:
    """Warns once when the logged ``output_std`` says every image maps to nearly one point."""

    def __init__(self) -> None:
        self.warned = False

    def check(self, logs: dict[str, float], epoch: int, before_warning: Callable[[], Any] = lambda: None) -> None:
        std = logs.get("output_std")
        if std is None or std >= COLLAPSED_STD or self.warned:
            return
        self.warned = True
        before_warning()
        warnings.warn(
            f"the outputs have collapsed at epoch {epoch}: output_std={std:.2g}, where well-spread outputs "
            f"give about 1/sqrt(dim), so every image maps to nearly the same point and the features carry "
            f"little information; try a lower optim.lr or a different method",
            stacklevel=2,
        )


def describe(terms: dict[str, torch.Tensor]) -> str:
    return ", ".join(f"{key}={float(value):.4g}" for key, value in terms.items())
