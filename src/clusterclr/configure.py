"""From a configuration tree to a validated ``Config``: the one place settings are checked.

``build_config`` layers a run's sources (``layering.layer``) and validates
them; ``validate`` checks any tree (a saved run's too). Validation

- moves keys that were renamed to their current place, with a warning
  (``DEPRECATED_KEYS``, and each method's ``Options.renamed``);
- checks every section against the schema, then the method's own options
  against its registered ``Options`` model, once: the ``Config`` carries
  the typed options from then on (``config.method.options``);
- gives the ``positives`` section to the methods that take semantic
  positives, and refuses it for the others;
- checks the model keys against each other (a known weights format, ViT
  options only for ViTs).

``build_config``, for a new run, also checks that a weights file it names exists.

``resolve_clusters`` turns ``clusters`` into K once the data is known.
Every problem is a ``UserError`` naming the key.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from clusterclr.config import Config, ModelConfig, PositivesConfig
from clusterclr.errors import UserError
from clusterclr.layering import layer
from clusterclr.methods.registry import get_method
from clusterclr.models.pretrained import FAMILIES
from clusterclr.positives.sampler import SemanticPositives

# Old dotted key -> its current one. Both spellings of the number of clusters are K, ``clusters``.
DEPRECATED_KEYS = {"eval.clusters": "clusters", "method.clusters": "clusters"}


def build_config(
    config_file: str | Path | dict[str, Any] | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> Config:
    """Layer defaults, data set defaults, file, flags and ``--set`` overrides (``layering.layer``), then validate.

    A saved run's config is only validated: its weights file may be gone, the checkpoint holds the weights.
    """
    config = validate(layer(config_file, flags, overrides))
    if config.model.weights is not None and not Path(config.model.weights).is_file():
        raise UserError(f"model.weights: no weights file at {config.model.weights}")
    return config


def validate(tree: dict[str, Any], source: str = "config") -> Config:
    tree = _move_deprecated_keys(tree, source)
    try:
        config = Config.model_validate(tree)
    except ValidationError as err:
        raise UserError(f"{source}: {format_validation_error(err)}") from None
    _type_method_options(config, source)
    _validate_positives(config, source)
    _validate_model(config.model, source)
    return config


def resolve_clusters(requested: int | str | None, num_classes: int | None, num_images: int, what: str) -> int | str:
    """K: ``requested`` (``config.clusters``), else the number of classes; checked against the data.

    "auto" stays "auto": K is chosen from features once there are some (``evaluate.context``).
    """
    clusters = requested if requested is not None else num_classes
    if clusters is None:
        raise UserError(f"{what} has no labels: set the number of clusters with --set clusters=K (or clusters=auto)")
    if clusters == "auto":
        return clusters
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
    if takes_positives:
        # The method's own defaults (SCAN mines 20 neighbours), under what the config sets.
        given = {} if config.positives is None else config.positives.model_dump(exclude_unset=True)
        config.positives = PositivesConfig(**{**method.positives_defaults, **given})
        # Compared with the default rather than checked for presence: a saved config writes every key out.
        share = config.positives.partner_share
        if share != PositivesConfig().partner_share and not method.weighs_by_share:
            raise UserError(
                f"{source}: positives.partner_share={share} does not apply to method '{config.method.name}': "
                f"its partner term is weighed by method.partner_weight"
            )
    elif config.positives is not None:
        keys = ", ".join(f"positives.{k}" for k in sorted(config.positives.model_fields_set)) or "positives"
        raise UserError(
            f"{source}: {keys} is set but method '{config.method.name}' takes no semantic positives; "
            f"remove it or use a sepp_* method"
        )


def _validate_model(model: ModelConfig, source: str) -> None:
    if model.weights_format != "auto" and model.weights_format not in FAMILIES:
        raise UserError(f"{source}: 'model.weights_format': unknown format {model.weights_format!r}; choose auto or one of {', '.join(FAMILIES)}")
    if model.weights is not None or model.architecture is not None:
        return  # the file (or what was recorded from it) decides the architecture
    if model.backbone == "vit":
        raise UserError(f"{source}: 'model.backbone': vit is a ViT of a shape only a weights file records; choose vit_small, vit_base or vit_large")
    if not model.is_vit:
        defaults = ModelConfig()
        given = [key for key in ("patch_size", "pooling", "activation") if getattr(model, key) != getattr(defaults, key)]
        if given:
            raise UserError(f"{source}: 'model.{given[0]}' applies to ViT backbones, not to {model.backbone}")


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
