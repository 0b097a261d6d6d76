"""From a configuration tree to a validated ``Config``: the one place settings are checked.

``build_config`` layers a run's sources (``config.layer``) and validates
them; ``validate`` checks any tree (a saved run's too). Validation

- moves keys that were renamed to their current place, with a warning
  (``DEPRECATED_KEYS``, and each method's ``Options.renamed``);
- checks every section against the schema, then the method's own options
  against its registered ``Options`` model, once: the ``Config`` carries
  the typed options from then on (``config.method.options``);
- gives the ``positives`` section to the methods that take semantic
  positives, and refuses it for the others.

``resolve_clusters`` turns ``clusters`` into K once the data is known.
Every problem is a ``UserError`` naming the key.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from clusterclr.config import Config, PositivesConfig, layer
from clusterclr.errors import UserError
from clusterclr.methods.registry import get_method
from clusterclr.positives.sampler import SemanticPositives

# Old dotted key -> its current one. Both spellings of the number of clusters are K, ``clusters``.
DEPRECATED_KEYS = {"eval.clusters": "clusters", "method.clusters": "clusters"}


def build_config(
    config_file: str | Path | dict[str, Any] | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> Config:
    """Layer defaults, data set defaults, file, flags and ``--set`` overrides (``config.layer``), then validate."""
    return validate(layer(config_file, flags, overrides))


def validate(tree: dict[str, Any], source: str = "config") -> Config:
    tree = _move_deprecated_keys(tree, source)
    try:
        config = Config.model_validate(tree)
    except ValidationError as err:
        raise UserError(f"{source}: {format_validation_error(err)}") from None
    _type_method_options(config, source)
    _validate_positives(config, source)
    return config


def resolve_clusters(requested: int | None, num_classes: int | None, num_images: int, what: str) -> int:
    """K: ``requested`` (``config.clusters``), else the number of classes; checked against the data."""
    clusters = requested if requested is not None else num_classes
    if clusters is None:
        raise UserError(f"{what} has no labels: set the number of clusters with --set clusters=K")
    if not 1 <= clusters <= num_images:
        raise UserError(f"cannot make {clusters} clusters of the {num_images} images of {what}")
    return clusters


def _move_deprecated_keys(tree: dict[str, Any], source: str) -> dict[str, Any]:
    """``tree`` with renamed keys moved to their current names; an unset (null) old key is dropped silently."""
    tree = copy.deepcopy(tree)
    renamed = dict(DEPRECATED_KEYS)
    method = tree.get("method")
    if isinstance(method, dict):
        name = method.get("name", "simclr")
        options = get_method(name).Options if isinstance(name, str) and _registered(name) else None
        renamed.update({f"method.{old}": f"method.{new}" for old, new in getattr(options, "renamed", {}).items()})
    for old, new in renamed.items():
        found, value = _pop(tree, old.split("."))
        if not found or value is None:
            continue
        present, current = _pop(tree, new.split("."))
        if present and current is not None and current != value:
            raise UserError(f"{source}: '{old}' and '{new}' are the same setting and disagree ({value!r} vs {current!r}); keep '{new}'")
        _put(tree, new.split("."), value)
        warnings.warn(f"{source}: '{old}' is now '{new}'; the old key still works for now", FutureWarning, stacklevel=3)
    return tree


def _registered(name: str) -> bool:
    try:
        get_method(name)
    except UserError:
        return False  # the schema's check reports the unknown method, with the others' names
    return True


def _pop(tree: dict[str, Any], path: list[str]) -> tuple[bool, Any]:
    node = tree
    for part in path[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or path[-1] not in node:
        return False, None
    return True, node.pop(path[-1])


def _put(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value


def _type_method_options(config: Config, source: str) -> None:
    method = get_method(config.method.name)
    try:
        options = method.Options.model_validate(config.method.given())
    except ValidationError as err:
        raise UserError(f"{source}: {format_validation_error(err, prefix='method.')}") from None
    config.method.set_options(options)


def _validate_positives(config: Config, source: str) -> None:
    method = get_method(config.method.name)
    takes_positives = issubclass(method, SemanticPositives)
    if config.positives is None:
        if takes_positives:
            config.positives = PositivesConfig()
    elif takes_positives:
        # Compared with the default rather than checked for presence: a saved config writes every key out.
        share = config.positives.partner_share
        if share != PositivesConfig().partner_share and not method.weighs_by_share:
            raise UserError(
                f"{source}: positives.partner_share={share} does not apply to method '{config.method.name}': "
                f"its partner term is weighed by method.partner_weight"
            )
    else:
        keys = ", ".join(f"positives.{k}" for k in sorted(config.positives.model_fields_set)) or "positives"
        raise UserError(
            f"{source}: {keys} is set but method '{config.method.name}' takes no semantic positives; "
            f"remove it or use a sepp_* method"
        )


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    problems = []
    for e in err.errors():
        key = prefix + ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            problems.append(f"unknown key '{key}'")
        else:
            message = e["msg"].removeprefix("Value error, ")
            given = e.get("input")
            # A whole section as "input" says nothing the message doesn't.
            shown = repr(given)
            # A huge value (a YAML alias bomb, a pasted array) is named, not echoed.
            shown = shown if len(shown) <= 80 else shown[:60] + f"... ({len(shown)} characters)"
            problems.append(f"'{key}': {message}" + ("" if isinstance(given, dict) else f" (got {shown})"))
    return "; ".join(problems)
