"""Files written so that a crash never leaves a half-written one behind, and read without trusting them.

Every writer goes to a temporary file in the target's directory, syncs it to
disk and then renames it over the target, which is atomic on POSIX and
Windows: a process killed at any moment leaves either the old file or the
new one. A failed write (disk full, read-only directory) removes its
temporary file and raises a ``UserError`` naming the target.

Checkpoints keep one previous version beside them (``previous.pt`` next to
``last.pt``): the old file is renamed aside just before the new one is
renamed in, so there is always at least one complete checkpoint, and
``load_newest_checkpoint`` falls back to the previous one when the newest
cannot be read. Checkpoints load with ``torch.load(weights_only=True)``,
which refuses anything but tensors and plain data, so a hostile file cannot
run code.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import torch

from clusterclr.errors import UserError

# Keys every clusterclr checkpoint holds; a file without them is not one.
CHECKPOINT_KEYS = ("format", "epoch", "optimizer", "scaler", "config", "data_info", "normalisation", "method")
# 1: epoch boundaries only; 2 adds an optional mid-epoch position and the count of skipped steps.
CHECKPOINT_FORMAT = 2


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None], keep_previous: Path | None = None) -> Path:
    """Write ``path`` through ``write``, all or nothing; ``keep_previous`` receives the version it replaces."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise UserError(f"cannot write {path}: {_reason(err)}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise UserError(f"cannot write {path}: {_reason(err)}") from None
        raise
    _sync_directory(path.parent)
    return path


def _sync_directory(directory: Path) -> None:
    # The renames live in the directory entry; without this a power cut could undo them.
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _reason(err: OSError) -> str:
    return err.strerror or str(err) or type(err).__name__


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2) + "\n")


def previous_checkpoint(path: Path) -> Path:
    """Where the checkpoint before ``path`` is kept."""
    return path.with_name(f"previous{path.suffix}")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically, keeping the checkpoint it replaces as ``previous.pt``."""
    path = Path(path)
    # Serialised in memory first: torch's writer turns a failing file write (a full disk) into an
    # unrelated RuntimeError, while a plain write of the bytes raises the OSError that says why.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return atomic_write(path, lambda f: f.write(buffer.getbuffer()), keep_previous=previous_checkpoint(path))


def is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive: a zip with the ``constants.pkl`` that ``torch.save`` never writes."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.rsplit("/", 1)[-1] == "constants.pkl" for name in archive.namelist())
    except zipfile.BadZipFile:
        return False


def load_plain(path: Path, what: str, allowed: Sequence[type] = ()) -> Any:
    """``torch.load`` of a file that may hold only tensors and plain data (``weights_only=True``, plus the
    ``allowed`` classes): nothing in it is run, and a file that holds more is refused, as is a corrupt one."""
    if is_torchscript(path):
        # torch.load hands TorchScript archives to torch.jit.load, which would load the archive's code.
        raise UserError(f"{path} is a TorchScript archive, not a {what} file of tensors; it was not loaded")
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(allowed)):
            # torch warns about the pickle protocol of files it wrote itself; it says nothing about the file.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n|$)", str(err))
        detail = f" ({refused.group(1).strip()})" if refused else ""
        raise UserError(
            f"cannot load {what} {path}: it holds more than tensors and plain data{detail}, so it was refused; "
            "nothing in it was run"
        ) from None
    except Exception as err:  # torch raises several types for corrupt or truncated files
        # torch's first sentence says what failed; the rest is advice for torch.load's callers.
        reason = " ".join(str(err).split()).split(". ")[0][:200] or f"{type(err).__name__} (empty or truncated file?)"
        raise UserError(f"cannot load {what} {path}: {reason}") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and check a checkpoint without running pickled code (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    state = load_plain(path, "checkpoint")
    if not isinstance(state, dict) or not all(key in state for key in CHECKPOINT_KEYS):
        found = ", ".join(map(str, state)) if isinstance(state, dict) else type(state).__name__
        raise UserError(f"{path} is not a clusterclr checkpoint (found: {found or 'nothing'})")
    if not isinstance(state["format"], int) or not 1 <= state["format"] <= CHECKPOINT_FORMAT:
        raise UserError(f"{path} has checkpoint format {state['format']!r}; this clusterclr reads 1..{CHECKPOINT_FORMAT}")
    return state


def load_newest_checkpoint(path: Path) -> tuple[dict[str, Any], Path]:
    """The checkpoint at ``path``, or the previous one (with a warning) if that one cannot be loaded."""
    previous = previous_checkpoint(path)
    try:
        return load_checkpoint(path), path
    except UserError as newest_error:
        if not previous.is_file():
            raise
        try:
            state = load_checkpoint(previous)
        except UserError:
            raise newest_error from None
        warnings.warn(f"{newest_error}; using the previous checkpoint {previous} (epoch {state['epoch']})", stacklevel=2)
        return state, previous


def save_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Tensors in the safetensors format (no code, only arrays and a JSON header), written atomically."""
    from safetensors.torch import save

    # Copies: safetensors refuses tensors that share memory (a state dict may name one module twice)
    # and stores plain row-major arrays, which channels-last weights are not.
    copies = {name: tensor.detach().cpu().clone(memory_format=torch.contiguous_format) for name, tensor in tensors.items()}
    data = save(copies, metadata=metadata)
    return atomic_write(path, lambda f: f.write(data))
