"""A weights file as a flat name → tensor mapping, read without running anything in it.

Three containers: safetensors files (plain data), TorchScript archives
(``torchscript.py``'s restricted reader) and ``torch.save`` pickles, read
with ``torch.load(weights_only=True)``, which refuses anything but tensors
and plain data. The container is told by the file's content, not its name.

Training code wraps weights in its own structures, which are taken off:
a checkpoint's ``state_dict`` (Lightning), ``model``, or DINO's ``teacher``
(preferred: it is the network DINO evaluates) or ``student``; then name
prefixes: ``module.`` (DistributedDataParallel), ``_orig_mod.``
(``torch.compile``), ``model.``, ``backbone.`` (DINO, Lightning modules),
``encoder_q.`` (MoCo), ``base_encoder.`` (MoCo v3), and the base-model
prefixes of Hugging Face's classification models. A prefix that only some
names carry selects them: the rest is the training method's heads.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from clusterclr.errors import UserError
from clusterclr.io import is_torchscript, load_plain
from clusterclr.models.pretrained.torchscript import read_torchscript

WRAPPER_KEYS = ("teacher", "state_dict", "model", "student")
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "backbone.", "encoder_q.", "base_encoder.", "dinov2.", "resnet.")


@dataclass(frozen=True)
class Weights:
    tensors: dict[str, torch.Tensor]
    container: str  # "safetensors", "torchscript" or "pickle"
    unwrapped: tuple[str, ...]  # the wrapper keys and prefixes taken off, outermost first


def read_weights(path: Path) -> Weights:
    """The tensors in ``path``, out of their wrappers."""
    if not path.is_file():
        raise UserError(f"no weights file at {path}")
    if _is_safetensors(path):
        container, content = "safetensors", _read_safetensors(path)
    elif is_torchscript(path):
        container, content = "torchscript", read_torchscript(path)
    else:
        container, content = "pickle", _read_pickle(path)
    tensors, unwrapped = _unwrap(content, path)
    if not tensors:
        raise UserError(f"{path} holds no tensors")
    return Weights(tensors, container, unwrapped)


def _is_safetensors(path: Path) -> bool:
    # An 8-byte little-endian header length, then the JSON header itself.
    with path.open("rb") as f:
        head = f.read(9)
    return path.suffix == ".safetensors" or (len(head) == 9 and head[8:9] == b"{")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise UserError(
            f"cannot load {path}: not a readable safetensors file ({reason}; truncated or corrupt?)"
        ) from None


def _read_pickle(path: Path) -> Any:
    # argparse.Namespace is plain data (DINO's and MoCo's checkpoints keep their arguments in one).
    return load_plain(path, "weights", [argparse.Namespace])


def _unwrap(content: Any, path: Path) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    steps: list[str] = []
    while isinstance(content, Mapping) and not all(isinstance(v, torch.Tensor) for v in content.values()):
        key = next((k for k in WRAPPER_KEYS if isinstance(content.get(k), Mapping)), None)
        if key is None:
            raise UserError(f"{path} holds no weights clusterclr can find: a dict of {listed(list(content))}")
        content = content[key]
        steps.append(key)
    if not isinstance(content, Mapping):
        raise UserError(f"{path} holds a {type(content).__name__}, not named weights")
    tensors = {str(k): v for k, v in content.items()}
    while True:
        prefix = next((p for p in WRAPPER_PREFIXES if any(k.startswith(p) for k in tensors)), None)
        if prefix is None:
            return tensors, tuple(steps)
        tensors = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        steps.append(prefix)


def listed(keys: list[Any], shown: int = 5) -> str:
    more = f", … ({len(keys)} in all)" if len(keys) > shown else ""
    return ", ".join(map(str, keys[:shown])) + more
