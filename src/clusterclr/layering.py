"""How a run's configuration tree is layered from its sources, each overriding the one before:

1. the schema's defaults (``clusterclr.config``),
2. the data set's own defaults (``DATASET_DEFAULTS``, e.g. no flips for digits),
3. a YAML file (``--config``),
4. the CLI's named flags (``--method``, ``--epochs``, ...),
5. ``--set key.path=value`` overrides (values parsed as YAML).

``layer`` returns the tree; ``clusterclr.configure`` validates it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from clusterclr.config import DataConfig
from clusterclr.errors import UserError

# Properties of a data set that change what a sensible default is.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    # Mirrored digits are other symbols: no flips for glyph data.
    "digits": {"augment": {"flip_prob": 0.0}},
    "mnist": {"augment": {"flip_prob": 0.0}},
}


def layer(
    config_file: str | Path | dict[str, Any] | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """The configuration tree: data set defaults, then the file, the flags and the ``--set`` overrides.

    ``config_file`` is a YAML path or an already-read mapping. ``flags`` maps
    dotted keys to values (``{"train.epochs": 5}``); None values are ignored.
    The schema's own defaults fill in the rest at validation.
    """
    if isinstance(config_file, dict):
        user = copy.deepcopy(config_file)
    else:
        user = read_yaml(config_file) if config_file else {}
    for key, value in (flags or {}).items():
        if value is not None:
            _set_path(user, key.split("."), value)
    for text in overrides or []:
        path, value = parse_override(text)
        _set_path(user, path, value)
    data = user.get("data")
    dataset = data.get("dataset", DataConfig().dataset) if isinstance(data, dict) else DataConfig().dataset
    return merge(DATASET_DEFAULTS.get(str(dataset), {}), user)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=0.1"`` -> (["optim", "lr"], 0.1); the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set expects key=value (e.g. optim.lr=0.1), got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for i, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"--set {'.'.join(path)}: {'.'.join(path[: i + 1])} is not a section")
        node = child
    node[path[-1]] = value


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise UserError(f"config file {path} is not valid YAML: {' '.join(str(err).split())}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise UserError(f"config file {path} must hold a mapping of sections, got {type(tree).__name__}")
    return tree
