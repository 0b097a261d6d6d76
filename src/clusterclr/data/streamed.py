"""Images read from their files when they are needed: the streamed side of ``ImageDataset``.

``StreamedImages`` stands where an in-memory data set holds its uint8
N×3×S×S tensor: it has that tensor's ``shape`` and ``dtype``, indexing it
decodes the rows asked for (the clean image: shorter side to S, centre
crop, exactly as the in-memory path decodes), ``take`` selects rows without
reading them, and bulk passes go through DataLoader workers
(``data/passes.py``), so memory does not grow with the number of images.
Where the images come from is an ``ImageStore``: files of a folder, members
of tar shards, rows of a memory-mapped array.

A file that cannot be decoded is found when it is read, not up front. It is
then replaced by the next readable image (rows in this set's order) and
reported to the set's ``BadFiles``, which either records it
(``data.skip_bad``) or stops with an error naming it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from clusterclr import distributed
from clusterclr.data.base import BadFile, ImageDataset, bad_files_message
from clusterclr.data.decode import decode, square
from clusterclr.data.index import StringTable
from clusterclr.errors import UserError
from clusterclr.pathtext import path_text

# Consecutive unreadable images a replacement is searched over before giving up on the data set.
_REPLACEMENT_SEARCH = 1000


class ImageStore(Protocol):
    """Random access to a collection of images, by row."""

    def __len__(self) -> int: ...

    def image(self, row: int) -> Image.Image | str:
        """The upright RGB image of ``row``, or why it cannot be used."""

    def source(self, row: int) -> str:
        """Where ``row`` comes from, for messages and CSVs (a file path, a shard member)."""


class FileStore:
    """Image files: ``root`` joined with each of ``files`` (relative paths, or absolute ones with root '/')."""

    def __init__(self, root: Path, files: StringTable) -> None:
        self.root, self.files = root, files

    @classmethod
    def of(cls, paths: Sequence[Path]) -> FileStore:
        return cls(Path("/"), StringTable.of(str(Path(p).absolute()) for p in paths))

    def __len__(self) -> int:
        return len(self.files)

    def image(self, row: int) -> Image.Image | str:
        return decode(self.root / self.files[row])

    def source(self, row: int) -> str:
        return str(self.root / self.files[row])


class ConcatStore:
    """Several stores, one after the other (STL-10's train and unlabeled splits trained on together)."""

    def __init__(self, stores: Sequence[ImageStore]) -> None:
        self.stores = list(stores)
        self.starts = np.cumsum([0] + [len(s) for s in self.stores])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _locate(self, row: int) -> tuple[ImageStore, int]:
        part = int(np.searchsorted(self.starts, row, side="right")) - 1
        return self.stores[part], row - int(self.starts[part])

    def image(self, row: int) -> Image.Image | str:
        store, row = self._locate(row)
        return store.image(row)

    def source(self, row: int) -> str:
        store, row = self._locate(row)
        return store.source(row)


class BadImageError(UserError):
    """An image that cannot be used was met while streaming and ``data.skip_bad`` is off."""

    def __init__(self, files: Sequence[BadFile], skip_hint: str) -> None:
        super().__init__(bad_files_message(files, skip_hint))
        self.files = tuple(files)


SKIP_HINT = "--set data.skip_bad=true"  # how a training run skips bad files


class BadFiles:
    """The unreadable images a streamed data set has met: remembered and warned about once each
    (``skip``), or an error naming them. Shared by every subset of one data set."""

    def __init__(self, skip: bool, hint: str = SKIP_HINT) -> None:
        """``hint``: how the user asks to skip bad files, named in the error."""
        self.skip, self.hint = skip, hint
        self.found: dict[str, BadFile] = {}

    def meet(self, bad: Sequence[BadFile], collective: bool = False) -> None:
        """Record ``bad``; raise ``BadImageError`` unless skipping. ``collective``: every rank of a distributed
        run calls this at the same point, and all raise together when any met a file it may not skip."""
        bad = list({b.path: b for b in bad}.values())  # a run of bad files is met again by each row it stands in for
        if collective and distributed.world_size() > 1:
            if not distributed.any_rank(bool(bad) and not self.skip):
                self._record(bad)
                return
            # This rank's list may be empty: another's is not.
            raise BadImageError([b for part in distributed.gather_objects(list(bad)) for b in part], self.hint)
        if bad and not self.skip:
            raise BadImageError(bad, self.hint)
        self._record(bad)

    def _record(self, bad: Sequence[BadFile]) -> None:
        new = [b for b in bad if b.path not in self.found]
        for b in new:
            self.found[b.path] = BadFile(b.path, b.reason)
        if new:
            warnings.warn(
                f"skipped {len(new)} unreadable image file(s) (data.skip_bad=true), e.g. {path_text(new[0].path)}: {new[0].reason}",
                stacklevel=3,
            )

    def remember(self, files: Sequence[tuple[str, str]]) -> None:
        """Files an earlier part of the run already skipped (from its ``skipped_files.txt``)."""
        for path, reason in files:
            self.found.setdefault(path, BadFile(path, reason))

    def everyone(self) -> list[BadFile]:
        """Every rank's skipped files, in the order met (a collective in a distributed run)."""
        parts = distributed.gather_objects(list(self.found.values()))
        merged = {b.path: b for part in parts for b in part}
        return list(merged.values())


class Sources(Sequence[str]):
    """The ``sources`` of a streamed data set: each row's path, looked up when asked for."""

    def __init__(self, store: ImageStore, rows: np.ndarray) -> None:
        self.store, self.rows = store, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.store.source(int(self.rows[i]))

    def take(self, rows) -> Sources:
        return Sources(self.store, self.rows[np.asarray(rows, dtype=np.int64)])


class StreamedImages:
    """uint8 N×3×size×size images decoded from ``store`` on demand (see the module docstring).

    ``rows``: this set's rows of the store, in order. ``workers``: DataLoader
    worker processes for bulk passes (0: in this process).
    """

    dtype = torch.uint8
    ndim = 4

    def __init__(
        self, store: ImageStore, size: int, rows: np.ndarray | None = None, bad_files: BadFiles | None = None, workers: int = 0
    ) -> None:
        self.store, self.size, self.workers = store, size, workers
        self.rows = np.arange(len(store), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        self.bad_files = bad_files if bad_files is not None else BadFiles(skip=False)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), 3, self.size, self.size))

    @property
    def sources(self) -> Sources:
        return Sources(self.store, self.rows)

    def _like(self, rows: np.ndarray, size: int | None = None) -> StreamedImages:
        return StreamedImages(self.store, self.size if size is None else size, rows, self.bad_files, self.workers)

    def take(self, indices) -> StreamedImages:
        """Rows ``indices`` of this set, still unread."""
        return self._like(self.rows[np.asarray(torch.as_tensor(indices, dtype=torch.int64))])

    def resized(self, size: int) -> StreamedImages:
        return self._like(self.rows, size)

    @staticmethod
    def concat(parts: Sequence[StreamedImages]) -> StreamedImages:
        if len({p.size for p in parts}) != 1:
            raise UserError(f"cannot join streamed splits of different image sizes: {sorted({p.size for p in parts})}")
        store = ConcatStore([p.store for p in parts])
        starts = store.starts[:-1]
        rows = np.concatenate([p.rows + start for p, start in zip(parts, starts)])
        return StreamedImages(store, parts[0].size, rows, parts[0].bad_files, parts[0].workers)

    def readable(self, i: int) -> tuple[int, Image.Image, list[BadFile]]:
        """(the row read, its image, the bad files passed over): row ``i``, or the next readable one after it."""
        bad = []
        for step in range(min(len(self), _REPLACEMENT_SEARCH)):
            row = (i + step) % len(self)
            image = self.store.image(int(self.rows[row]))
            if not isinstance(image, str):
                return row, image, bad
            bad.append(BadFile(self.store.source(int(self.rows[row])), image, row))
        raise UserError(
            f"none of {len(bad)} images in a row could be read, from {bad[0].path} ({bad[0].reason}) on; "
            "is the data set intact?"
        )

    def clean(self, i: int) -> tuple[np.ndarray, list[BadFile]]:
        """The clean 3×S×S pixels of row ``i`` (or of its replacement) and the bad files met on the way."""
        _, image, bad = self.readable(i)
        return square(image, self.size), bad

    def decode_rows(self, indices: Sequence[int]) -> tuple[torch.Tensor, list[BadFile]]:
        pixels = np.empty((len(indices), 3, self.size, self.size), dtype=np.uint8)
        bad: list[BadFile] = []
        for k, i in enumerate(indices):
            pixels[k], met = self.clean(int(i))
            bad += met
        return torch.from_numpy(pixels), bad

    def __getitem__(self, key) -> torch.Tensor:
        """Decoded pixels, as indexing the in-memory tensor gives them (in this process; bulk passes use workers)."""
        if isinstance(key, (int, np.integer)) or (isinstance(key, torch.Tensor) and key.ndim == 0):
            pixels, bad = self.decode_rows([int(key) % len(self)])
            self.bad_files.meet(bad)
            return pixels[0]
        indices = range(len(self))[key] if isinstance(key, slice) else np.asarray(torch.as_tensor(key, dtype=torch.int64))
        pixels, bad = self.decode_rows(list(indices))
        self.bad_files.meet(bad)
        return pixels


def decode_all(dataset: ImageDataset) -> tuple[ImageDataset | None, tuple[BadFile, ...]]:
    """A streamed data set decoded into memory (a thread per core, up to 8), unreadable images left out and
    returned as bad files; None when none could be read."""
    images = dataset.images

    def read(i: int) -> np.ndarray | str:
        image = images.store.image(int(images.rows[i]))
        return image if isinstance(image, str) else square(image, images.size)

    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        pixels = list(pool.map(read, range(len(images))))
    sources = images.sources
    bad = tuple(BadFile(sources[i], p) for i, p in enumerate(pixels) if isinstance(p, str))
    keep = [i for i, p in enumerate(pixels) if not isinstance(p, str)]
    if not keep:
        return None, bad
    kept = ImageDataset(
        torch.from_numpy(np.stack([pixels[i] for i in keep])),
        None if dataset.labels is None else dataset.labels[keep],
        dataset.class_names,
        tuple(sources[i] for i in keep),
    )
    return kept, bad
