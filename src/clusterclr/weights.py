"""A run that starts from a pretrained weights file (``model.weights``): what the file decides, recorded in the config.

``with_weights(config)`` reads the file once (``models.pretrained.load_pretrained``,
which runs nothing in it) and returns the config as the run records it,
with the backbone's weights to start from:

- ``model.backbone`` and ``model.architecture`` (the backbone builder's
  arguments), and a ResNet's ``stem`` and ``width`` or a ViT's
  ``patch_size``: the architecture the file holds, so the run's checkpoint
  rebuilds it without the file. A ``model.backbone`` the user set must be
  the file's; other keys set otherwise (a preset's ``width``) are replaced,
  with a warning.
- ``model.weights_format``: the family found.
- ``data.mean`` and ``data.std`` (the statistics the weights were trained
  with), ``data.image_size`` (their resolution) and ``data.channels`` (the
  channels they take), each unless the user set it.

Everything downstream (the normalisation in the checkpoint, ``embed``,
``evaluate``, exports) then follows from the recorded config, as for any run.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from clusterclr.config import Config
from clusterclr.configure import validate
from clusterclr.errors import UserError
from clusterclr.models.backbones import BACKBONES
from clusterclr.models.pretrained import Pretrained, load_pretrained


def with_weights(config: Config) -> tuple[Config, dict[str, torch.Tensor] | None]:
    """``config`` as a run from ``model.weights`` records it, and the backbone state to start from (None without weights)."""
    if config.model.weights is None:
        return config, None
    model = config.model
    pretrained = load_pretrained(
        model.weights, model.weights_format, activation=None if model.activation == "auto" else model.activation,
        pooling=model.pooling,
    )
    tree = config.model_dump(mode="json")
    tree["model"].update(_decided(config, pretrained), architecture=dict(pretrained.spec.kwargs), weights_format=pretrained.family)
    preprocessing, data = pretrained.preprocessing, tree["data"]
    if data["image_size"] is None:
        data["image_size"] = preprocessing.resolution
    if data["mean"] is None:
        data["mean"], data["std"] = list(preprocessing.mean), list(preprocessing.std)
    if data["channels"] is None:
        data["channels"] = pretrained.spec.kwargs["in_channels"]
    return validate(tree, source=f"config with {model.weights}"), pretrained.backbone.state_dict()


def _decided(config: Config, pretrained: Pretrained) -> dict[str, Any]:
    """The model keys the file decides; a backbone the user set to another is refused, other keys replaced."""
    spec, model = pretrained.spec, config.model
    decided: dict[str, Any] = {"backbone": spec.name}
    if spec.name in BACKBONES:
        decided.update(stem=spec.kwargs["stem"], width=spec.kwargs["width"])
    else:
        decided["patch_size"] = spec.kwargs["patch_size"]
    origin = f"{model.weights} ({pretrained.family})"
    if "backbone" in model.model_fields_set and model.backbone != spec.name:
        raise UserError(f"model.backbone={model.backbone}, but {origin} holds a {spec.name}; drop model.backbone or give its weights")
    for key, value in decided.items():
        if key in model.model_fields_set and getattr(model, key) != value:
            warnings.warn(f"model.{key}={getattr(model, key)} is replaced by {value} from {origin}: the weights decide the architecture", stacklevel=3)
    return decided
