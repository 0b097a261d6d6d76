"""Tar shards in the WebDataset layout: a data set split into files that copy, cache and stream well.

``write_shards`` (``clusterclr prepare FOLDER --out SHARDS/``) packs a folder
(flat or a class tree, as ``folder`` reads it) into ``shard-000000.tar``, ...
of about ``--size`` bytes each. Each image is one WebDataset sample, its
members sharing a key (the image's row, nine digits):

- ``KEY.jpg`` (or .png, ...): the file's bytes as they were, never re-encoded;
- ``KEY.cls``: the class index in ASCII (class trees only);
- ``KEY.json``: ``{"source": "its/path/in/the/folder.jpg"}``.

Beside them, ``shards.json`` is a wids shard index (the indexed-dataset
format of the ``webdataset`` package: ``__kind__: wids-shard-index-v1`` and a
``shardlist`` of ``url``, ``nsamples``, ``filesize``), plus ``class_names``.
So the shards are WebDataset's format, read by its tools as they are;
clusterclr reads them with Python's ``tarfile`` alone, no new dependency.

Reading is random access: the tar headers of each shard are scanned once
(and cached like a large folder's index) for each image member's offset and size,
and an image is one ``pread``. So a streamed epoch visits the images in the
run's seeded order, each rank reads only its own slice of every batch, and
nothing differs from a streamed folder but where the bytes come from.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from clusterclr.data.base import ImageDataset, RawSplits
from clusterclr.data.decode import EXTENSIONS, decode
from clusterclr.data.folder import DEFAULT_IMAGE_SIZE, folder_index
from clusterclr.data.index import CACHE_FROM, StringTable, cache_dir, write_cache
from clusterclr.data.streamed import StreamedImages, decode_all
from clusterclr.errors import UserError
from clusterclr.io import atomic_write, write_json

INDEX = "shards.json"
KIND = "wids-shard-index-v1"
DEFAULT_SIZE = 1 << 30  # bytes per shard: WebDataset's advice is 100 MB to a few GB
_IMAGE_SUFFIXES = frozenset(ext.lstrip(".") for ext in EXTENSIONS)


def write_shards(folder: Path, out: Path, shard_bytes: int = DEFAULT_SIZE, progress: bool = True) -> dict:
    """Pack ``folder``'s images into tar shards in ``out`` (new or empty); returns the shard index written."""
    index = folder_index(folder)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} already exists and is not an empty folder; choose a new or empty one")
    out.mkdir(parents=True, exist_ok=True)
    shards, samples, size = [], [], 0

    def close() -> None:
        name = f"shard-{len(shards):06d}.tar"
        path = atomic_write(out / name, lambda f: _write_tar(f, samples))
        shards.append({"url": name, "nsamples": len(samples), "filesize": path.stat().st_size})

    for row in tqdm(range(len(index.files)), desc="packing", unit="image", disable=not progress):
        relative = index.files[row]
        try:
            data = (index.root / relative).read_bytes()
        except OSError as err:
            raise UserError(f"cannot read {index.root / relative}: {err.strerror or err}") from None
        if samples and size + len(data) > shard_bytes:
            close()
            samples, size = [], 0
        label = None if index.labels is None else int(index.labels[row])
        samples.append((row, relative, data, label))
        size += len(data)
    close()
    descriptor = {
        "__kind__": KIND, "wids_version": 1, "name": folder.absolute().name, "shardlist": shards,
        "class_names": list(index.class_names) if index.class_names else None,
    }
    write_json(out / INDEX, descriptor)
    return descriptor


def _write_tar(f, samples: list[tuple[int, str, bytes, int | None]]) -> None:
    with tarfile.open(fileobj=f, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for row, relative, data, label in samples:
            key = f"{row:09d}"
            members = [(f"{key}.{Path(relative).suffix.lower().lstrip('.')}", data)]
            if label is not None:
                members.append((f"{key}.cls", str(label).encode()))
            members.append((f"{key}.json", json.dumps({"source": relative}).encode()))
            for name, payload in members:
                info = tarfile.TarInfo(name)  # fixed owner, mode and time: the same folder packs to the same bytes
                info.size, info.mode = len(payload), 0o444
                tar.addfile(info, io.BytesIO(payload))


class ShardStore:
    """The images of a set of shards, each read with one ``pread`` at its member's offset."""

    def __init__(self, directory: Path, shards: list[str], shard: np.ndarray, offset: np.ndarray, size: np.ndarray,
                 names: StringTable) -> None:
        self.directory, self.shards = directory, shards
        self.shard, self.offset, self.size, self.names = shard, offset, size, names
        self._files: dict[int, int] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.shard)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_files": {}}  # descriptors do not travel to worker processes

    def read(self, row: int) -> bytes:
        if self._pid != os.getpid():  # a forked worker opens its own descriptors
            self._files, self._pid = {}, os.getpid()
        shard = int(self.shard[row])
        if shard not in self._files:
            self._files[shard] = os.open(self.directory / self.shards[shard], os.O_RDONLY)
        return os.pread(self._files[shard], int(self.size[row]), int(self.offset[row]))

    def image(self, row: int) -> Image.Image | str:
        try:
            data = self.read(row)
        except OSError as err:
            return err.strerror or str(err)
        return decode(data)

    def source(self, row: int) -> str:
        return f"{self.directory / self.shards[int(self.shard[row])]}:{self.names[row]}"


def open_streamed(root: Path | None, image_size: int | None = None) -> RawSplits:
    """The images of the shards in ``root`` (the folder ``prepare`` wrote, or its shards.json), indexed but not read."""
    directory, descriptor = _descriptor(root)
    shards = [entry["url"] for entry in descriptor["shardlist"]]
    shard, offset, size, names, labels = _members(directory, shards)
    store = ShardStore(directory, shards, shard, offset, size, names)
    images = StreamedImages(store, DEFAULT_IMAGE_SIZE if image_size is None else image_size)
    class_names = descriptor.get("class_names")
    if class_names and (len(labels) != len(images) or labels.min(initial=0) < 0 or labels.max(initial=0) >= len(class_names)):
        raise UserError(f"shards in {directory}: the .cls members do not give every image one of {len(class_names)} classes")
    return RawSplits(train=ImageDataset(
        images,
        torch.from_numpy(labels) if class_names else None,
        tuple(class_names) if class_names else None,
        images.sources,
    ))


def load(root: Path | None, image_size: int | None = None) -> RawSplits:
    """Every image of the shards decoded into memory; unreadable ones are bad files."""
    raw = open_streamed(root, image_size)
    train, bad = decode_all(raw.train)
    if train is None:
        raise UserError(f"shards: none of the {len(raw.train)} images in {root} could be read; e.g. {bad[0].path}: {bad[0].reason}")
    return RawSplits(train=train, bad_files=bad)


def _descriptor(root: Path | None) -> tuple[Path, dict]:
    if root is None:
        raise UserError(f"dataset 'shards' needs --data-root pointing at the folder `clusterclr prepare` wrote (with {INDEX})")
    path = Path(root)
    path = path / INDEX if path.is_dir() else path
    try:
        descriptor = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"shards: cannot read the shard index {path}: {err}") from None
    if not isinstance(descriptor, dict) or descriptor.get("__kind__") != KIND or not descriptor.get("shardlist"):
        raise UserError(f"shards: {path} is not a wids shard index ({KIND} with a shardlist)")
    return path.parent, descriptor


def _members(directory: Path, shards: list[str]):
    """Per image, in shard order: (shard number, data offset, size, member name, class or -1); cached per shard set."""
    stamp = [(name, *_stat(directory / name)) for name in shards]
    cache = cache_dir() / "shards" / f"{hashlib.sha256(json.dumps([str(directory), stamp]).encode()).hexdigest()[:32]}.npz"
    try:
        with np.load(cache, allow_pickle=False) as saved:
            return (saved["shard"], saved["offset"], saved["size"], StringTable(saved["blob"], saved["offsets"]), saved["labels"])
    except (OSError, ValueError, KeyError):
        pass
    rows: list[tuple[int, int, int, str, int]] = []
    for number, name in enumerate(tqdm(shards, desc="indexing shards", unit="shard", disable=len(shards) < 10)):
        rows += [(number, *member) for member in _scan(directory / name)]
    shard, offset, size, labels = (np.array([r[i] for r in rows], dtype=np.int64) for i in (0, 1, 2, 4))
    names = StringTable.of(r[3] for r in rows)
    if len(rows) >= CACHE_FROM:
        write_cache(cache, {"shard": shard, "offset": offset, "size": size, "blob": names.blob, "offsets": names.offsets,
                            "labels": labels})
    return shard, offset, size, names, labels


def _stat(path: Path) -> tuple[int, int]:
    try:
        status = path.stat()
    except OSError as err:
        raise UserError(f"shards: cannot read {path}: {err.strerror or err}") from None
    return status.st_size, status.st_mtime_ns


def _scan(path: Path) -> list[tuple[int, int, str, int]]:
    """(offset, size, member name, class or -1) of each sample's image member, in the shard's order."""
    samples: dict[str, list] = {}
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, field = Path(member.name).name.partition(".")
                sample = samples.setdefault(f"{Path(member.name).parent}/{key}", [None, None, None, -1])
                if field.lower() in _IMAGE_SUFFIXES:
                    sample[:3] = [member.offset_data, member.size, Path(member.name).name]
                elif field == "cls":
                    sample[3] = int(tar.extractfile(member).read().decode().strip())
    except (OSError, tarfile.TarError, ValueError) as err:
        raise UserError(f"shards: {path} is not a readable tar shard: {err}") from None
    missing = [key for key, sample in samples.items() if sample[0] is None]
    if missing:
        raise UserError(f"shards: sample {missing[0]} in {path} has no image member ({', '.join(sorted(_IMAGE_SUFFIXES))})")
    return [tuple(sample) for sample in samples.values()]
