"""Progress bars for long work: rate and ETA on a terminal, a line every half minute in a log file."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm


def progress_bar(iterable: Iterable[Any] | None = None, *, enabled: bool = True, **options: Any) -> tqdm:
    """A tqdm bar on stderr; redrawn often on a terminal, rarely when stderr is a file (a job's log)."""
    return tqdm(
        iterable, disable=not enabled, dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30, **options
    )
