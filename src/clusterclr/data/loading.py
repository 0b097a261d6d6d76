"""DataLoaders over streamed images: decoding in worker processes, batches in a fixed order.

Every loader here takes an explicit list of batches (rows per batch) and a
private random generator, so it never draws from the global RNG (which the
training loop seeds and a mid-epoch checkpoint saves): a run's random
stream is the same whether the data is streamed or not, with 0 workers or 8.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader

from clusterclr.data.base import BadFile
from clusterclr.data.streamed import StreamedImages

# Images whose clean views give a streamed set's normalisation statistics: a seeded sample, not every file.
STATISTICS_SAMPLE = 10_000


def default_workers() -> int:
    """Loader processes when ``data.workers`` is unset: the cores of this machine shared among its training
    processes (torchrun's LOCAL_WORLD_SIZE), one left for the process itself, at most 8 each."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_process = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(8, per_process - 1))


def loader(dataset, batches, workers: int, pin: bool, persistent: bool = False) -> DataLoader:
    """A DataLoader taking ``batches`` (an iterable of index lists) from ``dataset.__getitems__`` as they are."""
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=_as_is,
        pin_memory=pin,
        persistent_workers=persistent and workers > 0,
        generator=torch.Generator(),
    )


def _as_is(batch):
    return batch


class _CleanRows:
    """Clean images by row: what a DataLoader's workers decode for a pass over a streamed data set."""

    def __init__(self, images: StreamedImages) -> None:
        self.images = images

    def __getitems__(self, rows: list[int]) -> tuple[torch.Tensor, list[BadFile]]:
        return self.images.decode_rows(rows)

    def __len__(self) -> int:
        return len(self.images)


def image_batches(
    images: torch.Tensor | StreamedImages, chunks: Sequence[torch.Tensor], pin: bool = False, collective: bool = False,
    judge: bool = True,
) -> Iterator[tuple[torch.Tensor, list[BadFile]]]:
    """(uint8 images, bad files replaced in them) for each chunk of rows, in order.

    In-memory images are indexed. Streamed ones are decoded by their
    ``workers`` (the clean view); an unreadable file is replaced by the next
    readable image and, with ``judge``, reported to the set's ``BadFiles``
    (an error unless skipping; ``collective``: every rank of a distributed
    run passes over its chunks in step, so all stop together).
    """
    if isinstance(images, torch.Tensor):
        for rows in chunks:
            yield images[rows], []
        return
    if len(chunks) == 0:
        return
    batches = [rows.tolist() for rows in chunks]
    # A worker decodes ahead while this process computes: none is needed for a single batch.
    workers = min(images.workers, len(batches) - 1)
    for pixels, bad in loader(_CleanRows(images), batches, workers, pin):
        if judge:
            images.bad_files.meet(bad, collective)
        yield pixels, bad
        del pixels  # before the next batch is taken: one batch alive at a time


def statistics_chunks(images: StreamedImages, chunk: int = 32) -> Iterator[torch.Tensor]:
    """Chunks of clean images for a streamed set's channel statistics: every image up to ``STATISTICS_SAMPLE``
    (the statistics of the decoded set, exactly), else a fixed random sample of that many."""
    rows = torch.arange(len(images))
    if len(images) > STATISTICS_SAMPLE:
        rows = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:STATISTICS_SAMPLE].sort().values
    for pixels, _ in image_batches(images, rows.split(chunk), judge=False):  # unreadable files: stand-ins, no verdict
        yield pixels
        del pixels
