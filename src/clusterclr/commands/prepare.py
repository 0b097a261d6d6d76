"""``clusterclr prepare FOLDER --out SHARDS/``: pack a folder of images into WebDataset tar shards.

The shards (``data/shards.py``) are what to copy to the machines of a
cluster: a few large files instead of a million small ones, read by each
training process for its own slice of every batch. Train on them with
``--dataset shards --data-root SHARDS/``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ByteSize, TypeAdapter, ValidationError

from clusterclr.data.shards import DEFAULT_SIZE, write_shards
from clusterclr.errors import UserError


def shard_size(text: str | int | None) -> int:
    """``--size``: bytes per shard, e.g. 500MB or 2GiB (default 1 GiB)."""
    if text is None:
        return DEFAULT_SIZE
    try:
        size = int(TypeAdapter(ByteSize).validate_python(text))
    except ValidationError:
        raise UserError(f"--size must be a size such as 500MB or 2GiB, got {text!r}") from None
    if size < 1:
        raise UserError(f"--size must be positive, got {text!r}")
    return size


def prepare(folder: Path, out: Path, size: str | int | None = None, progress: bool = True) -> dict:
    """Write the shards of ``folder`` into ``out``; returns their wids shard index."""
    if not folder.is_dir():
        raise UserError(f"image folder not found: {folder}")
    out_abs, folder_abs = out.absolute().resolve(), folder.absolute().resolve()
    if out_abs == folder_abs or folder_abs in out_abs.parents:
        raise UserError(f"--out {out} is inside the image folder {folder}; choose a folder outside it")
    return write_shards(folder, out, shard_size(size), progress)
