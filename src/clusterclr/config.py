"""The configuration schema: every section and key, with its default (a CPU-friendly recipe: a narrow ResNet-18).

This module only declares the sections; ``clusterclr.layering`` builds a
run's configuration tree from its sources, and ``clusterclr.configure``
validates it into a ``Config``, including the method's own options, which
each method declares as a ``MethodOptions``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ByteSize,
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
    # Stream images from their files (folders, shards, stl10) rather than decode them all into memory:
    # auto streams when the decoded images would exceed memory_limit (clusterclr.data.budget).
    stream: bool | Literal["auto"] = "auto"
    # Bytes the decoded images may take, e.g. 16GB or 512MiB; None: half this machine's memory,
    # shared by its training processes.
    memory_limit: ByteSize | None = None
    # DataLoader processes that decode streamed images; None: the machine's cores shared by its
    # training processes, one kept for each, at most 8 each.
    workers: NonNegativeInt | None = None
    # Convert every image to this many channels (grey repeated into RGB, RGB to BT.601 luminance);
    # None keeps the data set's. Pretrained weights set it to the channels they take.
    channels: Literal[1, 3] | None = None
    # Normalise with these per-channel statistics (in [0, 1] units) instead of the training images' own;
    # pretrained weights set them to those of the images they were trained on.
    mean: list[float] | None = None
    std: list[PositiveFloat] | None = None

    @field_validator("root")
    @classmethod
    def _absolute(cls, root: str | None) -> str | None:
        return None if root is None else str(Path(root).expanduser().absolute())

    @model_validator(mode="after")
    def _statistics_together(self) -> DataConfig:
        if (self.mean is None) != (self.std is None) or (self.mean is not None and len(self.mean) != len(self.std)):
            raise ValueError("mean and std go together, one value per channel each")
        return self


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
    """The backbone: a ResNet or a ViT, trained from scratch or started from a pretrained weights file.

    ``weights`` (a file: ``clusterclr.models.pretrained``) decides the
    architecture: ``backbone``, ``architecture`` and the ResNet's ``stem`` and
    ``width`` or the ViT's ``patch_size`` are filled in from it (set them only
    to confirm what it holds), so the run's checkpoint rebuilds without the file.
    """

    # vit: a ViT of another shape, which only a recorded architecture (from weights) describes.
    backbone: Literal["resnet18", "resnet34", "resnet50", "vit_small", "vit_base", "vit_large", "vit"] = "resnet18"
    # ResNets. auto: the CIFAR stem (no downsampling) up to 64 px, the ImageNet stem above.
    stem: Literal["auto", "cifar", "imagenet"] = "auto"
    width: PositiveFloat = 0.25
    # ViTs: patch side, features (the class token, or it beside the mean patch token), and the MLP's
    # activation (auto: GELU, or the weights' family's: QuickGELU for OpenAI's CLIP).
    patch_size: PositiveInt = 16
    pooling: Literal["cls", "cls+mean"] = "cls"
    activation: Literal["auto", "gelu", "quick_gelu"] = "auto"
    # A pretrained weights file to start from, and its layout (auto: told from its tensors' names).
    # Stored absolute, like data.root.
    weights: str | None = None
    weights_format: str = "auto"
    # The backbone builder's arguments, recorded from the weights file; not for editing by hand.
    architecture: dict[str, Any] | None = None

    @field_validator("weights")
    @classmethod
    def _absolute(cls, weights: str | None) -> str | None:
        return None if weights is None else str(Path(weights).expanduser().absolute())

    @property
    def is_vit(self) -> bool:
        return self.backbone.startswith("vit")

    def describe(self) -> str:
        """The backbone in a few words, e.g. "resnet18 ×0.25" or "vit_small/14 (dinov2 weights)"."""
        shape = f"{self.backbone}/{self.patch_size}" if self.is_vit else f"{self.backbone} ×{self.width:g}"
        return shape + (f" ({self.weights_format} weights)" if self.weights else "")


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
    # Multiplies the backbone's learning rate: below 1 fine-tunes a pretrained backbone gently; 0 freezes
    # it (no gradients computed, batch norm kept on its running statistics) so only the heads train.
    backbone_lr_scale: NonNegativeFloat = 1.0


class TrainConfig(_Section):
    epochs: NonNegativeInt = 200
    # Cut `epochs` to as many as fit in this many minutes here, measured before training starts (the
    # config records the epochs it became): `cluster` sets it so that its default length stays short on
    # a slow CPU. A `--minutes` budget replaces both.
    max_minutes: PositiveFloat | None = None
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
    """How a run is evaluated: the kNN classifier, k-means, and how K is chosen when ``clusters`` is ``auto``."""

    knn_k: PositiveInt = 20
    knn_temperature: PositiveFloat = 0.07
    # With clusters: auto, K is the best of this range by this criterion (clusterclr.stage.choose_k).
    auto_clusters: tuple[int, int] = (2, 20)
    auto_criterion: Literal["silhouette", "eigengap"] = "silhouette"
    # Bounded: faiss takes C ints, and beyond these a run only burns time.
    kmeans_restarts: int = Field(3, ge=1, le=1000)
    kmeans_iterations: int = Field(50, ge=1, le=100_000)
    batch_size: PositiveInt = 512

    @field_validator("auto_clusters")
    @classmethod
    def _a_range(cls, bounds: tuple[int, int]) -> tuple[int, int]:
        if not 2 <= bounds[0] < bounds[1]:
            raise ValueError(f"must be [smallest, largest] K with 2 <= smallest < largest, got {list(bounds)}")
        return bounds


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
    # Plain instance epochs before the model being trained first mines its own partners. A given
    # encoder is good from the start, so its partners are mined before the first epoch whatever this
    # says: a preset's warm-up then does not delay `--set positives.encoder=RUN_DIR`.
    warmup_epochs: NonNegativeInt = 10
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

    @field_validator("warmup_epochs", mode="before")
    @classmethod
    def _saved_default(cls, epochs: int | None) -> int:
        # Runs saved before the warm-up became self-mining's alone wrote null for the default.
        return cls.model_fields["warmup_epochs"].default if epochs is None else epochs

    def first_mining_epoch(self) -> int:
        return 0 if self.encoder is not None else self.warmup_epochs


class StageConfig(_Section):
    """The clustering stage on a trained encoder's features (``clusterclr.stage``): cluster heads trained so
    that an image and its mined neighbours agree (SCAN) or share pointwise mutual information (TEMI).

    ``clusters``: K' outputs per head; None is K (``clusters``), more is over-clustering. ``heads`` are
    trained at once and the lowest-loss one kept; ``hidden_dim`` None for linear heads, else a two-layer
    MLP per head. ``neighbours`` k mined per image (None: the loss's paper, 20 for SCAN, 50 for TEMI),
    on features averaged over the clean view and ``mining_views`` augmented ones (0: the clean view's
    alone); the heads always read the clean view's features, as ``assign`` gives them.
    ``lr``, ``weight_decay``: AdamW at a constant rate. SCAN: ``entropy_weight`` λ. TEMI: ``beta``,
    ``student_temperature``, ``teacher_temperature``, ``teacher_momentum`` (the teacher heads' EMA),
    ``marginal_momentum``. Self-labelling: ``self_label_epochs`` (0: none) on images whose confidence
    is above ``confidence``, at ``self_label_lr``.

    Defaults measured on scikit-learn's digits (SimCLR features and raw pixels, 3 seeds): the papers' lr
    of 1e-4 was meant for end-to-end training, frozen heads need 1e-2 (1e-3 left SCAN at ACC 0.85 after
    50 epochs, 1e-2 reached 0.95); the paper's teacher momentum 0.996 suits thousands of steps, at digits'
    700 the teacher lagged and TEMI stalled at ACC 0.54-0.72, with 0.9 it reached 0.95; TEMI's heads end
    in a cosine layer (with plain linear heads it reached only ACC 0.70); self-labelling on frozen
    features changed nothing there (ACC 0.958 with and without), so it is off unless asked for.
    ``mining_views`` 4: chosen on three 40-epoch SimCLR runs of the CIFAR-10 subset, then held out on three
    125-epoch ones, where it lifted the stage on every seed (NMI 0.322 to 0.337, ACC 0.428 to 0.449; k-means
    0.304 / 0.398); level on digits, whose neighbours are already 97% right.
    """

    loss: Literal["scan", "temi"] = "scan"
    clusters: int | None = Field(None, ge=2)
    heads: PositiveInt = 10
    hidden_dim: PositiveInt | None = None
    neighbours: PositiveInt | None = None
    mining_views: NonNegativeInt = 4
    epochs: NonNegativeInt = 100
    batch_size: PositiveInt = 256
    lr: PositiveFloat = 1e-2
    weight_decay: NonNegativeFloat = 1e-4
    entropy_weight: NonNegativeFloat = 5.0
    beta: float = Field(0.6, gt=0, le=1)
    student_temperature: PositiveFloat = 0.1
    teacher_temperature: PositiveFloat = 0.1
    teacher_momentum: float = Field(0.9, ge=0, lt=1)
    marginal_momentum: float = Field(0.9, ge=0, lt=1)
    self_label_epochs: NonNegativeInt = 0
    confidence: float = Field(0.99, ge=0, lt=1)
    self_label_lr: PositiveFloat = 1e-3

    @model_validator(mode="after")
    def _paper_neighbours(self) -> StageConfig:
        if self.neighbours is None:
            # Each paper's k; on digits (SimCLR features) k = 50 also helped SCAN a little, and TEMI a lot.
            self.neighbours = {"scan": 20, "temi": 50}[self.loss]
        return self


class Config(_Section):
    seed: int = Field(0, ge=0, lt=2**31)
    # K, the number of clusters: evaluation's k-means, a method's cluster head, the default of a
    # method's own clustering granularity. None: the number of classes (required for unlabelled data).
    # "auto": chosen from the trained features (eval.auto_clusters, eval.auto_criterion).
    clusters: PositiveInt | Literal["auto"] | None = None
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
    # A clustering stage on the trained features (clusterclr cluster adds one by default); None: none.
    stage: StageConfig | None = None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
