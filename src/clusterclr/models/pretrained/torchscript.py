"""The tensors of a TorchScript archive (OpenAI's CLIP ``.pt`` files), read without running it.

``torch.jit.load`` would compile and run the archive's code. The weights
alone are in its ``data.pkl``, a pickle of the module tree whose tensors
point into the archive's ``data/`` records. This unpickler rebuilds those
tensors and nothing else: the module classes it names become inert records
of their attributes, a handful of plain containers are allowed, and any
other global (``os.system``, ``builtins.eval``, …) is refused before it is
looked up, so nothing in the file is ever executed.
"""

from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from clusterclr.errors import UserError

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


def read_torchscript(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the archive's module tree, named as its ``state_dict`` would name it."""
    try:
        with zipfile.ZipFile(path) as archive:
            root = _unpickle(archive)
    except _Refused as refused:
        raise UserError(
            f"cannot load {path}: it asks for {refused}, which is not part of a weights file, so it was refused "
            f"and nothing in it was run"
        ) from None
    except Exception as err:  # a damaged archive fails in zipfile, pickle or torch, each its own way
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise UserError(
            f"cannot load {path}: not a readable TorchScript archive ({reason}; truncated or corrupt?)"
        ) from None
    if not isinstance(root, _ScriptObject):
        raise UserError(f"cannot load {path}: its archive holds a {type(root).__name__}, not a module")
    return dict(_tensors(root, ""))


class _Refused(Exception):
    """A global the unpickler will not provide; the message is its qualified name."""


class _ScriptObject:
    """Stands in for a TorchScript module class: it keeps the attributes it is given and has no behaviour."""

    attributes: dict[str, Any]

    def __setstate__(self, state: Any) -> None:
        self.attributes = state if isinstance(state, dict) else {}


class _Storage:
    """Marks a storage type in a tensor's reference to its data record."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _rebuild_tensor(
    storage: torch.Tensor, offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_: Any
) -> torch.Tensor:
    return storage.as_strided(size, stride, offset)


def _rebuild_parameter(data: torch.Tensor, *_: Any) -> torch.Tensor:
    return data


def _passthrough(value: Any, *_: Any) -> Any:
    return value


# What a TorchScript data.pkl names besides its module classes: tensor rebuilding and plain containers.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    ("torch.jit._pickle", "build_intlist"): list,
    ("torch.jit._pickle", "build_floatlist"): list,
    ("torch.jit._pickle", "build_doublelist"): list,
    ("torch.jit._pickle", "build_boollist"): list,
    ("torch.jit._pickle", "build_tensorlist"): list,
    ("torch.jit._pickle", "restore_type_tag"): _passthrough,
}


class _WeightsUnpickler(pickle.Unpickler):
    def __init__(self, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(archive.open(f"{prefix}data.pkl"))
        self._archive = archive
        self._prefix = prefix

    def find_class(self, module: str, name: str) -> Any:
        # Fresh objects on every request: a pickle can set attributes on what it is given (BUILD), and
        # must not reach this module's own classes and functions through them.
        if module == "__torch__" or module.startswith("__torch__."):
            return type(name, (_ScriptObject,), {})
        if module == "torch" and name in _STORAGE_DTYPES:
            return _Storage(_STORAGE_DTYPES[name])
        if (module, name) in _ALLOWED:
            allowed = _ALLOWED[(module, name)]
            return lambda *args: allowed(*args)
        raise _Refused(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _Storage)):
            raise pickle.UnpicklingError(f"unexpected persistent reference {pid!r:.80}")
        _, storage, key, _location, numel = pid
        raw = self._archive.read(f"{self._prefix}data/{key}")
        itemsize = torch.empty(0, dtype=storage.dtype).element_size()
        if len(raw) < numel * itemsize:
            raise pickle.UnpicklingError(f"record data/{key} holds {len(raw)} bytes, {numel * itemsize} expected")
        if not numel:
            return torch.empty(0, dtype=storage.dtype)
        return torch.frombuffer(bytearray(raw[: numel * itemsize]), dtype=storage.dtype)


def _unpickle(archive: zipfile.ZipFile) -> Any:
    names = archive.namelist()
    pickles = [name for name in names if name.endswith("data.pkl") and name.count("/") <= 1]
    if not pickles:
        raise KeyError("no data.pkl")
    prefix = pickles[0][: -len("data.pkl")]
    if f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder").strip() != b"little":
        raise ValueError("a big-endian archive")
    return _WeightsUnpickler(archive, prefix).load()


def _tensors(node: _ScriptObject, prefix: str, seen: set[int] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    seen = set() if seen is None else seen
    if id(node) in seen:  # a pickle can make a module its own descendant
        return
    seen.add(id(node))
    for name, value in getattr(node, "attributes", {}).items():
        if isinstance(value, torch.Tensor):
            yield f"{prefix}{name}", value
        elif isinstance(value, _ScriptObject):
            yield from _tensors(value, f"{prefix}{name}.", seen)
