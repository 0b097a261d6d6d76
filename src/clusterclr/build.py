"""Assemble a run's parts from its config: data, device, views and method.

``build_parts`` loads the data and builds everything for training.
``load_model`` rebuilds the views and the trained method of a run from its
checkpoint alone, without reading the training data, for ``embed`` and
exports; ``load_parts`` rebuilds it with its data, for evaluation and
reports. K, the number of clusters, is resolved here, once, into the
method's ``DataInfo``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from clusterclr.augment import (
    ViewMaker,
    channel_stats,
    chunked_channel_stats,
    recipe_for,
)
from clusterclr.config import Config, ModelConfig
from clusterclr.configure import resolve_clusters, validate
from clusterclr.data.loading import statistics_chunks
from clusterclr.data.splits import DataSplits, load_splits
from clusterclr.errors import UserError
from clusterclr.io import load_checkpoint
from clusterclr.methods.base import DataInfo, Method, freeze
from clusterclr.methods.registry import get_method
from clusterclr.models.backbone_spec import BackboneSpec
from clusterclr.models.backbones import resolve_stem
from clusterclr.models.pretrained import load_pretrained
from clusterclr.positives.encoders import RunEncoder, WeightsEncoder
from clusterclr.positives.sampler import SemanticPositives, TrainedEncoder
from clusterclr.rundir import RunDir
from clusterclr.stage.head import StageHead
from clusterclr.stage.store import read_stage
from clusterclr.training.batches import InMemoryBatches, StreamedBatches

# The keys of ``DataInfo`` that describe the data itself; a resumed run must find them unchanged.
DATA_KEYS = ("num_images", "num_classes", "channels", "image_size")


@dataclass
class Model:
    """A method with the views it was trained with, on its device."""

    config: Config
    device: torch.device
    autocast_dtype: torch.dtype | None
    views: ViewMaker
    method: Method
    normalisation: dict[str, list[float]]
    # A finished clustering stage's head (``clusterclr stage``): where present, it assigns the clusters.
    cluster_stage: StageHead | None = field(default=None, kw_only=True)

    @property
    def clusters(self) -> int | str | None:
        """K: evaluation's k-means clusters, and the method's where it has its own ("auto": chosen from features)."""
        return self.method.data.clusters

    def cluster_head(self) -> nn.Module | None:
        """The module behind ``cluster_probabilities``: the stage's head, else the method's own, if any."""
        return self.cluster_stage if self.cluster_stage is not None else self.method.cluster_head_module()

    @torch.no_grad()
    def cluster_probabilities(self, features: torch.Tensor) -> torch.Tensor | None:
        """Soft cluster assignments (N × K) of backbone features, or None for a model without a cluster head."""
        if self.cluster_stage is not None:
            return self.cluster_stage(features)
        return self.method.cluster_probabilities(features)


@dataclass
class Parts(Model):
    """A model plus the data it trains and is evaluated on."""

    splits: DataSplits


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


def build_model(
    config: Config, data: DataInfo, normalisation: dict[str, list[float]], backbone_weights: dict[str, torch.Tensor] | None = None
) -> Model:
    """``backbone_weights`` (a trained backbone's state) are loaded before the method is built around
    the backbone, so copies the method makes of it (momentum encoders) start from them too."""
    device = select_device(config.train.device)
    views = ViewMaker(
        recipe_for(config.augment, min(data.image_size)),
        data.image_size,
        data.channels,
        tuple(normalisation["mean"]),
        tuple(normalisation["std"]),
        config.train.channels_last,
    ).to(device)
    backbone = _build_backbone(backbone_spec(config.model, data.channels, data.image_size), data.channels)
    if backbone_weights is not None:
        _load_backbone(backbone, backbone_weights)
    if config.optim.backbone_lr_scale == 0:
        freeze(backbone)  # before the method copies it (momentum encoders), so the copies are frozen too
    method_cls = get_method(config.method.name)
    parts = {}
    if issubclass(method_cls, SemanticPositives):
        encoder = config.positives.encoder
        parts = {"positives": config.positives, "encoder_loader": None if encoder is None else _encoder_loader(Path(encoder))}
    method = method_cls(backbone, config.method.options, data, config.train.gather_negatives, **parts).to(device)
    if config.train.channels_last:
        method = method.to(memory_format=torch.channels_last)
    return Model(config, device, select_precision(config.train.precision, device), views, method, normalisation)


def backbone_spec(model: ModelConfig, channels: int, image_size: tuple[int, int]) -> BackboneSpec:
    """The backbone ``model`` describes for ``channels``-channel images of ``image_size``: the architecture
    recorded from a weights file, else a ResNet or a ViT from the model keys."""
    if model.architecture is not None:
        return BackboneSpec(model.backbone, dict(model.architecture))
    if not model.is_vit:
        return BackboneSpec(model.backbone, {"in_channels": channels, "stem": resolve_stem(model.stem, image_size), "width": model.width})
    side, patch = min(image_size), model.patch_size
    if side < patch:
        raise UserError(f"model.patch_size={patch} is larger than the {side}-px images; set data.image_size (at least {patch}) or a smaller patch")
    activation = "gelu" if model.activation == "auto" else model.activation
    # The position grid is laid out for the training images; other sizes resample it.
    return BackboneSpec(model.backbone, {
        "patch_size": patch, "image_size": side // patch * patch, "in_channels": channels, "pooling": model.pooling,
        "activation": activation,
    })


def _build_backbone(spec: BackboneSpec, channels: int) -> torch.nn.Module:
    takes = spec.kwargs.get("in_channels", channels)
    if takes != channels:
        raise UserError(f"the backbone takes {takes}-channel images but the training images have {channels}; set data.channels={takes}")
    try:
        return spec.build()
    except (TypeError, ValueError) as err:
        raise UserError(f"model.architecture does not build a {spec.name}: {err}") from None


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
    if config.train.epochs and len(train) < config.optim.batch_size:
        raise UserError(f"the training split has {len(train)} images, fewer than optim.batch_size={config.optim.batch_size}")
    clusters = resolve_clusters(config.clusters, splits.num_classes, len(splits.bank), f"data set '{splits.name}'")
    if normalisation is None and config.data.mean is not None:
        normalisation = {"mean": list(config.data.mean), "std": list(config.data.std)}
    if normalisation is None:
        mean, std = chunked_channel_stats(statistics_chunks(train.images)) if train.streamed else channel_stats(train.images)
        normalisation = {"mean": list(mean), "std": list(std)}
    if len(normalisation["mean"]) != train.channels:
        raise UserError(
            f"the normalisation has {len(normalisation['mean'])} values (data.mean, data.std) but the images have "
            f"{train.channels} channels; set data.channels={len(normalisation['mean'])} or give {train.channels} values"
        )
    data = DataInfo(len(train), splits.num_classes, train.channels, train.image_size, clusters)
    model = build_model(config, data, normalisation, backbone_weights)
    return Parts(**vars(model), splits=splits)


def training_batches(parts: Parts) -> InMemoryBatches | StreamedBatches:
    """Where the training loop's batches come from: rows of the decoded images, or DataLoader workers
    decoding and cropping a streamed data set (``training/batches.py``)."""
    train, cfg = parts.splits.train, parts.config
    if not train.streamed:
        return InMemoryBatches(train.images, cfg.optim.batch_size)
    recipe = parts.views.recipe
    return StreamedBatches(
        train.images, cfg.optim.batch_size, parts.method.num_views, parts.method.needs_clean_view,
        recipe.crop_scale, recipe.crop_ratio, cfg.seed, pin=parts.device.type == "cuda",
    )


def model_state(model: Model) -> dict:
    """What a checkpoint needs to rebuild ``model`` without its data."""
    return {
        "config": model.config.model_dump(mode="json"),
        "data_info": asdict(model.method.data),
        "normalisation": model.normalisation,
        "method": model.method.state_dict(),
    }


def saved_data_info(state: dict, config: Config) -> DataInfo:
    """The ``DataInfo`` of a checkpoint's run, K resolved from its config (checkpoints before K had a home lack it)."""
    info = state["data_info"]
    data = DataInfo(info["num_images"], info["num_classes"], info["channels"], tuple(info["image_size"]))
    return replace(data, clusters=resolve_clusters(config.clusters, data.num_classes, data.num_images, "the run's training data"))


def load_model(run_dir: RunDir) -> tuple[Model, int]:
    """The trained model of a run (no data read), its clustering stage attached, and the epoch it reached."""
    config, state, _ = run_dir.read()
    model, epoch = _rebuild(config, state), int(state["epoch"])
    attach_stage(model, run_dir, epoch)
    return model, epoch


def load_parts(run_dir: RunDir) -> tuple[Parts, int]:
    """A run's parts (data included), rebuilt from its newest checkpoint, and the epoch it reached."""
    config, state, _ = run_dir.read()
    parts, epoch = build_parts(config, state["normalisation"]), int(state["epoch"])
    load_method_state(parts.method, state["method"])
    attach_stage(parts, run_dir, epoch)
    return parts, epoch


def attach_stage(model: Model, run_dir: RunDir, epoch: int) -> None:
    """Give ``model`` the run's finished clustering stage, if it has one."""
    record = read_stage(run_dir.cluster_stage)
    if record is None or record.get("head") is None:
        return
    if record["epoch"] != epoch:
        warnings.warn(
            f"{run_dir}'s clustering stage was fitted on the features of epoch {record['epoch']}, the model is at epoch "
            f"{epoch}; fit it again with: clusterclr stage {run_dir}",
            stacklevel=2,
        )
    model.cluster_stage = StageHead.from_saved(record["head"]).to(model.device)


def load_encoder(path: Path, device: torch.device) -> Model:
    """A trained model, from a run directory or a checkpoint file, on ``device``: to encode other data with."""
    checkpoint = RunDir(path).checkpoint if path.is_dir() else path
    return _encoding_model(load_checkpoint(checkpoint), checkpoint, device)


def _encoding_model(state: dict, checkpoint: Path, device: torch.device) -> Model:
    config = validate(state["config"], source=f"config in {checkpoint}")
    config.train.device = str(device)  # wherever it was trained, it encodes where it is needed
    return _rebuild(config, state)


def load_mining_encoder(path: Path, device: torch.device) -> TrainedEncoder:
    """SePP's given encoder (``positives.encoder``) on ``device``: a run directory or checkpoint, or a pretrained weights file."""
    if path.is_dir() or not path.is_file():
        return RunEncoder(load_encoder(path, device), str(path))
    try:
        state = load_checkpoint(path)
    except UserError as not_a_checkpoint:
        try:
            pretrained = load_pretrained(path)
        except UserError as err:
            raise UserError(f"positives.encoder {path} is no clusterclr checkpoint ({not_a_checkpoint}) and no weights file clusterclr reads ({err})") from None
        return WeightsEncoder.of(pretrained, str(path), device)
    return RunEncoder(_encoding_model(state, path, device), str(path))


def _encoder_loader(path: Path) -> Callable[[torch.device], TrainedEncoder]:
    return lambda device: load_mining_encoder(path, device)


def _rebuild(config: Config, state: dict) -> Model:
    model = build_model(config, saved_data_info(state, config), state["normalisation"])
    load_method_state(model.method, state["method"])
    return model


def backbone_state(method_state: dict[str, torch.Tensor], source: RunDir | Path) -> dict[str, torch.Tensor]:
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
    state = _current_names(state, method.legacy_state_prefixes)
    problems = _state_differences(method.state_dict(), state)
    if problems:
        raise UserError(
            f"the checkpoint's weights do not match the {method.name} model its config builds: "
            f"{'; '.join(problems)} (was it edited, or written by another version?)"
        )
    method.load_state_dict(state)


def _current_names(state: dict[str, torch.Tensor], legacy_prefixes: dict[str, str]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state.items():
        old = next((prefix for prefix in legacy_prefixes if key.startswith(prefix)), None)
        renamed[key if old is None else legacy_prefixes[old] + key[len(old):]] = value
    return renamed


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
