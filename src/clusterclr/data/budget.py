"""Whether a data set is decoded into memory or streamed from its files (``data.stream``, ``data.memory_limit``).

Decoded, a data set costs N × C × S × S bytes, held by every training
process: fast, and impossible for ImageNet (1.28M images are 190 GB at
224 px). ``stream: auto`` decodes into memory when that fits the budget and
streams otherwise; ``true`` and ``false`` force it. The budget is
``data.memory_limit``, by default half of this machine's memory (or of the
container's limit) shared by the training processes on it.
"""

from __future__ import annotations

import os
from pathlib import Path

from clusterclr.data.base import RawSplits


def machine_memory() -> int:
    """Bytes of memory this process may use: the machine's, or a smaller cgroup (container) limit."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit in (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")):
        try:
            text = limit.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def default_memory_limit() -> int:
    """Half of this machine's memory, divided among its training processes (torchrun's LOCAL_WORLD_SIZE)."""
    return machine_memory() // 2 // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def decoded_bytes(raw: RawSplits) -> int:
    """What holding every split of ``raw`` decoded would cost, in bytes."""
    splits = [d for d in (raw.train, raw.test, raw.unlabeled) if d is not None]
    return sum(len(d) * d.images.shape[1] * d.images.shape[2] * d.images.shape[3] for d in splits)


def streams(stream: bool | str, raw: RawSplits, memory_limit: int | None) -> bool:
    """``stream`` resolved for ``raw`` (streamable splits): True or False as given, ``auto`` by the budget."""
    if stream != "auto":
        return bool(stream)
    return decoded_bytes(raw) > (default_memory_limit() if memory_limit is None else memory_limit)
