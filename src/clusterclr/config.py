"""The configuration schema, and how a run's configuration tree is layered from its sources.

A run's configuration is built in layers, each overriding the one before:

1. the defaults below (a CPU-friendly recipe: a narrow ResNet-18),
2. the data set's own defaults (``DATASET_DEFAULTS``, e.g. no flips for digits),
3. a YAML file (``--config``),
4. the CLI's named flags (``--method``, ``--epochs``, ...),
5. ``--set key.path=value`` overrides (values parsed as YAML).

This module only declares the sections and layers the tree (``layer``);
``clusterclr.configure`` validates it into a ``Config``, including the
method's own options, which each method declares as a ``MethodOptions``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    field_validator,
    model_serializer,
    model_validator,
)

from clusterclr.errors import UserError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Section):
    dataset: str = "digits"
    # Stored absolute, so --resume, evaluate and embed work from any directory.
    root: str | None = None
    # Resize every image to this square size; None keeps the native size (folders default to 64).
    image_size: PositiveInt | None = None
    # Used only when the data set has no test split: the evaluation split carved from train.
    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    split_seed: int = Field(0, ge=0, lt=2**31)
    # Leave out image files that cannot be read (listed in RUN_DIR/skipped_files.txt) instead of stopping.
    skip_bad: bool = False

    @field_validator("root")
    @classmethod
    def _absolute(cls, root: str | None) -> str | None:
        return None if root is None else str(Path(root).expanduser().absolute())


class AugmentConfig(_Section):
    """How views are made. ``preset`` picks a recipe (``clusterclr.augment.PRESETS``); a field set here overrides it.

    ``clusterclr.augment.recipe_for`` returns a copy with every field filled.
    """

    preset: Literal["auto", "small", "cifar", "imagenet"] = "auto"
    crop_scale: tuple[float, float] | None = None
    crop_ratio: tuple[PositiveFloat, PositiveFloat] | None = None
    flip_prob: float | None = Field(None, ge=0, le=1)
    jitter_prob: float | None = Field(None, ge=0, le=1)
    brightness: NonNegativeFloat | None = None
    contrast: NonNegativeFloat | None = None
    saturation: NonNegativeFloat | None = None
    hue: float | None = Field(None, ge=0, le=0.5)
    grayscale_prob: float | None = Field(None, ge=0, le=1)
    blur_prob: float | None = Field(None, ge=0, le=1)
    blur_sigma: tuple[PositiveFloat, PositiveFloat] | None = None
    solarize_prob: float | None = Field(None, ge=0, le=1)

    @model_validator(mode="after")
    def _check_ranges(self) -> AugmentConfig:
        for key in ("crop_scale", "crop_ratio", "blur_sigma"):
            value = getattr(self, key)
            if value is not None and not value[0] <= value[1]:
                raise ValueError(f"{key} must be [low, high] with low <= high, got {list(value)}")
        if self.crop_scale is not None and not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must lie in (0, 1], got {list(self.crop_scale)}")
        return self


class ModelConfig(_Section):
    backbone: Literal["resnet18", "resnet34", "resnet50"] = "resnet18"
    # auto: the CIFAR stem (no downsampling) up to 64 px, the ImageNet stem above.
    stem: Literal["auto", "cifar", "imagenet"] = "auto"
    width: PositiveFloat = 0.25


class MethodOptions(BaseModel):
    """Base for a method's options (the ``method:`` section of a config, besides ``name``).

    ``renamed`` maps option names a method used to have to their current
    names; ``configure`` moves an old key to its new name with a warning.
    """

    model_config = ConfigDict(extra="forbid")
    renamed: ClassVar[dict[str, str]] = {}


class MethodConfig(BaseModel):
    """``name`` picks a registered method; the other keys are that method's options.

    The options are validated once, by ``configure.validate``, against the
    method's own ``Options`` model; ``options`` is that typed instance, and it
    is what the saved config writes out (every default filled in).
    """

    model_config = ConfigDict(extra="allow")
    name: str = "simclr"
    _options: MethodOptions | None = PrivateAttr(default=None)

    @property
    def options(self) -> MethodOptions:
        if self._options is None:
            raise RuntimeError("method options are typed by clusterclr.configure.validate; build the Config through it")
        return self._options

    def given(self) -> dict[str, Any]:
        """The option keys as written in the config tree, before validation."""
        return dict(self.model_extra or {})

    def set_options(self, options: MethodOptions) -> None:
        self._options = options
        self.__pydantic_extra__ = {}

    @model_serializer(mode="wrap")
    def _with_options(self, handler: Any, info: Any) -> dict[str, Any]:
        dumped = handler(self)
        if self._options is not None:
            dumped.update(self._options.model_dump(mode=info.mode))
        return dumped


class OptimConfig(_Section):
    name: Literal["sgd", "lars", "adam", "adamw"] = "sgd"
    # Base learning rate for a batch of 256; the rate used is lr * batch_size / 256.
    lr: PositiveFloat = 0.3
    scale_lr_with_batch: bool = True
    weight_decay: NonNegativeFloat = 5e-4
    momentum: float = Field(0.9, ge=0, lt=1)
    batch_size: PositiveInt = 256
    warmup_epochs: NonNegativeFloat = 5.0
    # Biases and normalisation weights are usually spared from decay and LARS scaling.
    exclude_bias_and_norm: bool = True
    # LARS trust coefficient η, and whether the layer-wise rate is capped at lr (as solo-learn does).
    lars_eta: PositiveFloat = 0.001
    lars_clip: bool = False


class TrainConfig(_Section):
    epochs: NonNegativeInt = 200
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$")
    # auto: bf16 autocast where the device computes it natively, fp32 otherwise.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = True
    checkpoint_every: PositiveInt = 5
    # Online kNN + k-means evaluation every N epochs; 0 evaluates only at the end.
    eval_every: NonNegativeInt = 10
    log_every: PositiveInt = 10
    num_threads: PositiveInt | None = None
    progress: bool = True
    # 0: a non-finite loss stops the run (checked at log steps). N > 0: check every step (a host
    # sync per step), skip the optimiser step on a non-finite loss, and stop after more than N.
    skip_nonfinite_steps: NonNegativeInt = 0
    # Write RUN_DIR/report.html (plots, cluster galleries) when training ends.
    report: bool = True
    # Compile the backbones with torch.compile (slow first steps, faster ones after, on a GPU).
    compile: bool = False
    # Distributed runs (torchrun): contrast with every process's views and keys, not each one's own;
    # batch norm over every process's batch (CUDA only).
    gather_negatives: bool = True
    sync_batch_norm: bool = False


class EvalConfig(_Section):
    knn_k: PositiveInt = 20
    knn_temperature: PositiveFloat = 0.07
    # Bounded: faiss takes C ints, and beyond these a run only burns time.
    kmeans_restarts: int = Field(3, ge=1, le=1000)
    kmeans_iterations: int = Field(50, ge=1, le=100_000)
    batch_size: PositiveInt = 512


class PositivesConfig(_Section):
    """Semantic positive pairs (SePP): how partners are mined and weighed, for the methods that take them.

    ``positives/semantic.py`` says what each filter does and why.
    """

    # None: the model being trained (see mine_with); else a run directory or checkpoint file of a
    # trained model. Stored absolute, like data.root.
    encoder: str | None = None
    # Partners per image: its most similar other images, before the filters.
    neighbours: PositiveInt = 1
    # Where similarities are measured: the features as they are, centred on their mean, or PCA-whitened.
    space: Literal["raw", "centred", "whitened"] = "centred"
    # Keep a neighbour only if the image is among the neighbour's own neighbours too.
    mutual: bool = True
    # Keep only pairs whose similarity reaches this quantile of all mined similarities; None keeps all.
    quantile: float | None = Field(None, ge=0, lt=1)
    # Cosine-similarity floor (in the mining space) a partner must reach; None: no floor.
    threshold: float | None = Field(None, ge=-1, le=1)
    # The partners' part of an anchor's positive weight, its own image's views keeping the rest;
    # None: every positive weighs the same (the paper's loss). sepp_simsiam weighs by method.partner_weight.
    partner_share: float | None = Field(0.5, ge=0, lt=1)
    # Re-mine every N epochs (the model being trained changes); None: mine once, after the warm-up.
    # A given encoder is mined once either way.
    refresh_every: PositiveInt | None = 5
    # Plain instance epochs before the first mining; None: 0 with a given encoder, else 10.
    warmup_epochs: NonNegativeInt | None = None
    # Which network of the model being trained mines: online (its backbone), momentum (its momentum
    # encoder's backbone; for methods without one, an EMA copy of the backbone kept for mining), or
    # auto (momentum where the method has a momentum encoder, else online).
    mine_with: Literal["auto", "online", "momentum"] = "auto"
    # EMA momentum of that copy, for methods without a momentum encoder of their own.
    momentum: float = Field(0.99, ge=0, lt=1)

    @field_validator("encoder")
    @classmethod
    def _absolute(cls, encoder: str | None) -> str | None:
        return None if encoder is None else str(Path(encoder).expanduser().absolute())

    def first_mining_epoch(self) -> int:
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        # An untrained model's neighbours are noise; a given encoder is good from the start.
        return 0 if self.encoder is not None else 10


class Config(_Section):
    seed: int = Field(0, ge=0, lt=2**31)
    # K, the number of clusters: evaluation's k-means, a method's cluster head, the default of a
    # method's own clustering granularity. None: the number of classes (required for unlabelled data).
    clusters: PositiveInt | None = None
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    method: MethodConfig = MethodConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    # Only for methods that take semantic positives (filled with defaults for them), so that a
    # positives.* key given to any other method is an error rather than silently ignored.
    positives: PositivesConfig | None = None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


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
