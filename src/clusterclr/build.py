"""Assemble a run's parts from its config: data, device, views and method.

``build_parts`` loads the data and builds everything for training.
``load_model`` rebuilds the views and the trained method from a checkpoint
alone, without reading the training data, for ``embed`` and exports.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from clusterclr.augment import ViewMaker, channel_stats, recipe_for
from clusterclr.config import Config, validate
from clusterclr.data.splits import DataSplits, load_splits
from clusterclr.errors import UserError
from clusterclr.io import load_checkpoint, load_newest_checkpoint
from clusterclr.methods.base import DataInfo, Method
from clusterclr.methods.registry import get_method
from clusterclr.models.backbones import build_backbone
from clusterclr.positives.sampler import SemanticPositives

CHECKPOINT = Path("checkpoints") / "last.pt"


@dataclass
class Model:
    """A method with the views it was trained with, on its device."""

    config: Config
    device: torch.device
    autocast_dtype: torch.dtype | None
    views: ViewMaker
    method: Method
    normalisation: dict[str, list[float]]


@dataclass
class Parts(Model):
    """A model plus the data it trains and is evaluated on."""

    splits: DataSplits
    eval_clusters: int


def select_device(spec: str) -> torch.device:
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise UserError(f"train.device={spec} but only {torch.cuda.device_count()} CUDA device(s) are available; use auto or cpu")
    if device.type == "cuda" and device.index is None:
        # The current device: under torchrun, the process's own GPU (LOCAL_RANK).
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"train.device={spec} but MPS is not available; use auto or cpu")
    return device


def select_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if precision == "auto":
        if device.type == "cuda":
            # Emulated bf16 (pre-Ampere) is slow: those GPUs get fp16 with a gradient scaler.
            return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
        if device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return torch.bfloat16
        return None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def resolve_clusters(requested: int | None, num_classes: int | None, num_points: int, what: str) -> int:
    """k for k-means: ``requested``, else the number of classes; checked against the data."""
    clusters = requested if requested is not None else num_classes
    if clusters is None:
        raise UserError(
            f"{what} has no labels: set the number of clusters with --set eval.clusters=K "
            "(method.clusters=K for a method with a cluster head)"
        )
    if not 1 <= clusters <= num_points:
        raise UserError(f"cannot make {clusters} clusters of the {num_points} images of {what}")
    return clusters


def resolve_stem(stem: str, image_size: tuple[int, int]) -> str:
    """The ResNet stem: as configured, or for "auto" the CIFAR stem up to 64 px and ImageNet's above."""
    return stem if stem != "auto" else ("cifar" if min(image_size) <= 64 else "imagenet")


def build_model(
    config: Config, data: DataInfo, normalisation: dict[str, list[float]], backbone_weights: dict[str, torch.Tensor] | None = None
) -> Model:
    """``backbone_weights`` (a trained backbone's state) are loaded before the method is built around
    the backbone, so copies the method makes of it (momentum encoders) start from them too."""
    device = select_device(config.train.device)
    side = min(data.image_size)
    views = ViewMaker(
        recipe_for(config.augment.preset, side, config.augment.overrides()),
        data.image_size,
        data.channels,
        tuple(normalisation["mean"]),
        tuple(normalisation["std"]),
    ).to(device)
    backbone = build_backbone(config.model.backbone, data.channels, resolve_stem(config.model.stem, data.image_size), config.model.width)
    if backbone_weights is not None:
        _load_backbone(backbone, backbone_weights)
    method_cls = get_method(config.method.name)
    extra = {"positives": config.positives} if issubclass(method_cls, SemanticPositives) else {}
    method = method_cls(backbone, method_cls.Options(**config.method.options()), data, **extra).to(device)
    if config.train.channels_last:
        method = method.to(memory_format=torch.channels_last)
    return Model(config, device, select_precision(config.train.precision, device), views, method, normalisation)


def build_parts(
    config: Config,
    normalisation: dict[str, list[float]] | None = None,
    backbone_weights: dict[str, torch.Tensor] | None = None,
) -> Parts:
    """Data and model for ``config``; ``normalisation`` (and ``backbone_weights``) come from a checkpoint
    when continuing a run (or fine-tuning a trained one)."""
    if config.train.num_threads is not None:
        torch.set_num_threads(config.train.num_threads)
    splits = load_splits(config.data)
    train = splits.train
    if len(train) < config.optim.batch_size:
        raise UserError(f"the training split has {len(train)} images, fewer than optim.batch_size={config.optim.batch_size}")
    # A method with a cluster head of K clusters is evaluated with K k-means clusters unless told otherwise.
    requested = config.eval.clusters if config.eval.clusters is not None else config.method.options().get("clusters")
    eval_clusters = resolve_clusters(requested, splits.num_classes, len(splits.bank), f"data set '{splits.name}'")
    if normalisation is None:
        mean, std = channel_stats(train.images)
        normalisation = {"mean": list(mean), "std": list(std)}
    data = DataInfo(len(train), splits.num_classes, train.channels, train.image_size)
    model = build_model(config, data, normalisation, backbone_weights)
    return Parts(**vars(model), splits=splits, eval_clusters=eval_clusters)


def model_state(model: Model) -> dict:
    """What a checkpoint needs to rebuild ``model`` without its data."""
    return {
        "config": model.config.model_dump(mode="json"),
        "data_info": asdict(model.method.data),
        "normalisation": model.normalisation,
        "method": model.method.state_dict(),
    }


def read_run(run_dir: Path) -> tuple[Config, dict]:
    """The config and newest readable checkpoint of the run in ``run_dir``."""
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    state, path = load_newest_checkpoint(run_dir / CHECKPOINT)
    return validate(state["config"], source=f"config in {path}"), state


def load_model(run_dir: Path) -> tuple[Model, int]:
    """The trained model of a run (no data read) and the epoch it reached."""
    config, state = read_run(run_dir)
    return _rebuild(config, state), int(state["epoch"])


def load_encoder(path: Path, device: torch.device) -> Model:
    """A trained model, from a run directory or a checkpoint file, on ``device``: to encode other data with."""
    checkpoint = path / CHECKPOINT if path.is_dir() else path
    state = load_checkpoint(checkpoint)
    config = validate(state["config"], source=f"config in {checkpoint}")
    config.train.device = str(device)  # wherever it was trained, it encodes where it is needed
    return _rebuild(config, state)


def _rebuild(config: Config, state: dict) -> Model:
    info = state["data_info"]
    data = DataInfo(info["num_images"], info["num_classes"], info["channels"], tuple(info["image_size"]))
    model = build_model(config, data, state["normalisation"])
    load_method_state(model.method, state["method"])
    return model


def backbone_state(method_state: dict[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """The backbone's weights within a checkpoint's method state (every method keeps it as ``backbone``)."""
    prefix = "backbone."
    weights = {key[len(prefix):]: value for key, value in method_state.items() if key.startswith(prefix)}
    if not weights:
        raise UserError(f"the checkpoint of {source} holds no backbone weights")
    return weights


def _load_backbone(backbone: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    problems = _state_differences(backbone.state_dict(), weights)
    if problems:
        raise UserError(
            f"the initial backbone does not fit the model built here ({'; '.join(problems)}); "
            "use the initial run's model.* settings and image channels"
        )
    backbone.load_state_dict(weights)


def load_method_state(method: Method, state: dict[str, torch.Tensor]) -> None:
    """Load a checkpoint's weights into ``method``, or say which keys and shapes differ from it."""
    problems = _state_differences(method.state_dict(), state)
    if problems:
        raise UserError(
            f"the checkpoint's weights do not match the {method.name} model its config builds: "
            f"{'; '.join(problems)} (was it edited, or written by another version?)"
        )
    method.load_state_dict(state)


def _state_differences(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> list[str]:
    """The keys of a checkpoint's ``state`` missing, unexpected or reshaped against a model's, described (at most 3 each)."""
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    reshaped = [
        f"{key} is {tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__} "
        f"in the checkpoint but {tuple(expected[key].shape)} in the model"
        for key, value in state.items()
        if key in expected and not (isinstance(value, torch.Tensor) and value.shape == expected[key].shape)
    ]
    return [
        f"{what} {', '.join(keys[:3])}{f' (and {len(keys) - 3} more)' if len(keys) > 3 else ''}".strip()
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("", reshaped))
        if keys
    ]
