"""The image files of a folder, found fast and remembered: what a streamed folder reads from.

Listing a million files with ``pathlib``'s ``rglob`` and a ``stat`` each
takes minutes; one ``os.scandir`` walk takes seconds, and the list is
cached (``cache_dir()/folders/``) for folders of ``CACHE_FROM`` images or
more, keyed by the folder's absolute path and checked against the
modification time of every directory in it: adding, removing or renaming a
file changes its directory's time, so a stale list is never used.

Paths are held in a ``StringTable``, one byte array and its offsets rather
than a Python string per file: a DataLoader worker forked from the training
process then shares the table instead of copying it page by page as
reference counts are touched, and a million paths cost tens of megabytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clusterclr.data.decode import EXTENSIONS
from clusterclr.errors import UserError
from clusterclr.io import atomic_write

CACHE_FROM = 10_000  # images: below this a walk is fast enough that a cache file is clutter
_CACHE_VERSION = 1


class StringTable(Sequence[str]):
    """An immutable sequence of strings stored as UTF-8 in one array; ``take`` selects rows without copying them."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray, rows: np.ndarray | None = None) -> None:
        self.blob, self.offsets, self.rows = blob, offsets, rows

    @classmethod
    def of(cls, strings: Iterable[str]) -> StringTable:
        encoded = [s.encode("utf-8", "surrogateescape") for s in strings]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1 if self.rows is None else len(self.rows)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} of {len(self)}")
        row = int(i if self.rows is None else self.rows[i])
        return self.blob[self.offsets[row] : self.offsets[row + 1]].tobytes().decode("utf-8", "surrogateescape")

    def take(self, rows: Sequence[int] | np.ndarray) -> StringTable:
        rows = np.asarray(rows, dtype=np.int64)
        return StringTable(self.blob, self.offsets, rows if self.rows is None else self.rows[rows])


@dataclass(frozen=True)
class FolderIndex:
    """A folder's image files in load order (relative POSIX paths), with class labels for a class tree."""

    root: Path
    files: StringTable
    labels: np.ndarray | None  # int64 class index per file; None for a flat folder
    class_names: tuple[str, ...] | None

    def path(self, i: int) -> Path:
        return self.root / self.files[i]


def image_files(directory: Path, recursive: bool) -> list[Path]:
    """The image files in ``directory`` (and below it with ``recursive``), sorted; hidden files left out."""
    return [directory / name for name in _walk(directory, recursive, {})]


def cached_index(root: Path, layout: Callable[[Path, dict[str, int]], tuple[list[str], dict[str, list[str]]]]) -> FolderIndex:
    """The folder's ``FolderIndex``: from the cache when every directory is as it was, else walked (by ``layout``,
    which returns (direct files, {class: files}) or raises) and cached when large."""
    root = root.absolute()
    cache = _cache_file(root)
    index = _read_cache(cache, root)
    if index is not None:
        return index
    times: dict[str, int] = {}
    direct, classes = layout(root, times)
    files = direct or [f for names in classes.values() for f in names]
    labels = None if direct else np.array([i for i, names in enumerate(classes.values()) for _ in names], dtype=np.int64)
    index = FolderIndex(root, StringTable.of(files), labels, None if direct else tuple(classes))
    if len(files) >= CACHE_FROM:
        _write_cache(cache, index, times)
    return index


def list_layout(root: Path, times: dict[str, int]) -> tuple[list[str], dict[str, list[str]]]:
    """(image files directly in root, {class folder: its files, searched recursively}) as relative POSIX paths;
    each directory walked has its modification time recorded in ``times`` (for the cache's check)."""
    times[""] = os.stat(root).st_mtime_ns
    direct = _walk(root, False, times)
    classes = {}
    for name in sorted(entry.name for entry in os.scandir(root) if _is_visible_dir(entry)):
        files = _walk(root / name, True, times, prefix=f"{name}/")
        if files:
            classes[name] = [f"{name}/{f}" for f in files]
    return direct, classes


def _is_visible_dir(entry: os.DirEntry) -> bool:
    # Hidden folders (.git, .ipynb_checkpoints, ...) are never classes; a class folder may be a symlink.
    return not entry.name.startswith(".") and entry.is_dir()


def _walk(directory: Path, recursive: bool, times: dict[str, int], prefix: str = "") -> list[str]:
    """Image files under ``directory`` as relative POSIX paths, sorted by path components (as ``sorted(Path)``).

    A depth-first walk over each directory's entries sorted by name gives that
    order directly. Like ``rglob``: symlinked subfolders are not followed (no
    loops), folders that cannot be listed are passed over, hidden files are
    left out, symlinked files count.
    """
    found: list[str] = []
    pending: list[tuple[str, bool]] = [("", True)]  # (relative path, is a directory), next on top
    while pending:
        relative, is_directory = pending.pop()
        if not is_directory:
            found.append(relative)
            continue
        here = directory / relative if relative else directory
        try:
            with os.scandir(here) as entries:
                listed = sorted(entries, key=lambda entry: entry.name)
            if recursive:
                times[prefix + relative] = os.stat(here).st_mtime_ns
        except PermissionError:
            continue
        children = []
        for entry in listed:
            path = f"{relative}/{entry.name}" if relative else entry.name
            try:
                if entry.is_file():
                    if not entry.name.startswith(".") and os.path.splitext(entry.name)[1].lower() in EXTENSIONS:
                        children.append((path, False))
                elif recursive and entry.is_dir() and not entry.is_symlink():
                    children.append((path, True))
            except OSError:
                continue
        pending.extend(reversed(children))
    return found


def cache_dir() -> Path:
    """Where clusterclr keeps caches: ``$CLUSTERCLR_CACHE``, else ``$XDG_CACHE_HOME/clusterclr``, else ``~/.cache/clusterclr``."""
    if os.environ.get("CLUSTERCLR_CACHE"):
        return Path(os.environ["CLUSTERCLR_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "clusterclr"


def _cache_file(root: Path) -> Path:
    return cache_dir() / "folders" / f"{hashlib.sha256(os.fsencode(root)).hexdigest()[:32]}.npz"


def _read_cache(cache: Path, root: Path) -> FolderIndex | None:
    try:
        with np.load(cache, allow_pickle=False) as saved:
            meta = json.loads(saved["meta"].tobytes().decode("utf-8"))
            if meta["version"] != _CACHE_VERSION or meta["root"] != os.fsdecode(root):
                return None
            for relative, mtime in meta["times"].items():
                if os.stat(root / relative).st_mtime_ns != mtime:
                    return None
            labels = saved["labels"] if meta["labelled"] else None
            files = StringTable(saved["blob"], saved["offsets"])
    except (OSError, ValueError, KeyError):
        return None  # no cache, an unreadable one, or a directory gone: walk again
    names = tuple(meta["class_names"]) if meta["labelled"] else None
    return FolderIndex(root, files, labels, names)


def _write_cache(cache: Path, index: FolderIndex, times: dict[str, int]) -> None:
    meta = {
        "version": _CACHE_VERSION, "root": os.fsdecode(index.root), "times": times,
        "labelled": index.labels is not None, "class_names": list(index.class_names or ()),
    }
    write_cache(cache, {
        "meta": np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8),
        "blob": index.files.blob, "offsets": index.files.offsets,
        "labels": index.labels if index.labels is not None else np.zeros(0, np.int64),
    })


def write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Save ``arrays`` at ``path``, atomically; a cache that cannot be written only costs the next run the work again."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: np.savez(f, **arrays))
    except (OSError, UserError):
        return
