"""Assemble a run's parts from its config: data, device, views and method."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clusterclr.augment import ViewMaker, channel_stats, recipe_for
from clusterclr.config import Config
from clusterclr.data.splits import DataSplits, load_splits
from clusterclr.errors import UserError
from clusterclr.methods.base import DataInfo, Method
from clusterclr.methods.registry import get_method
from clusterclr.models.backbones import build_backbone


@dataclass
class Parts:
    config: Config
    splits: DataSplits
    device: torch.device
    autocast_dtype: torch.dtype | None
    views: ViewMaker
    method: Method
    normalisation: dict[str, list[float]]


def select_device(spec: str) -> torch.device:
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train.device={spec} but no CUDA device is available; use auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"train.device={spec} but MPS is not available; use auto or cpu")
    return device


def select_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return torch.bfloat16
        return None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def resolve_clusters(config: Config, splits: DataSplits) -> int:
    if config.eval.clusters is not None:
        return config.eval.clusters
    if splits.num_classes is None:
        raise UserError(f"data set '{splits.name}' has no labels: set the number of clusters with --set eval.clusters=K")
    return splits.num_classes


def build_parts(config: Config, normalisation: dict[str, list[float]] | None = None) -> Parts:
    """``normalisation`` (mean/std) comes from a checkpoint when re-loading a run."""
    if config.train.num_threads is not None:
        torch.set_num_threads(config.train.num_threads)
    splits = load_splits(config.data)
    if len(splits.train) < config.optim.batch_size:
        raise UserError(
            f"the training split has {len(splits.train)} images, fewer than optim.batch_size={config.optim.batch_size}"
        )
    num_clusters = resolve_clusters(config, splits)
    device = select_device(config.train.device)
    train = splits.train
    if normalisation is None:
        mean, std = channel_stats(train.images)
        normalisation = {"mean": list(mean), "std": list(std)}
    side = min(train.image_size)
    views = ViewMaker(
        recipe_for(config.augment.preset, side, config.augment.overrides()),
        train.image_size,
        train.channels,
        tuple(normalisation["mean"]),
        tuple(normalisation["std"]),
    ).to(device)
    stem = config.model.stem if config.model.stem != "auto" else ("cifar" if side <= 64 else "imagenet")
    backbone = build_backbone(config.model.backbone, train.channels, stem, config.model.width)
    method_cls = get_method(config.method.name)
    method = method_cls(backbone, method_cls.Options(**config.method.options()), DataInfo(len(train), num_clusters))
    method = method.to(device)
    if config.train.channels_last:
        method = method.to(memory_format=torch.channels_last)
    return Parts(config, splits, device, select_precision(config.train.precision, device), views, method, normalisation)
