"""What every method is: a module that turns a batch of views into a loss.

The training loop knows nothing else about a method. A method owns its
networks (backbone plus heads), says how many augmented views it needs and
whether it wants the clean view, and may keep state between steps (momentum
encoders, queues, memory banks) through ``after_optimizer_step``.

Work that needs the whole training set (k-means for cluster centres or a
memory bank, mining semantic partners) happens in ``on_epoch_start``, which
sees every clean training image through ``TrainingImages``. Whatever it
computes must live in buffers, so a checkpoint carries it and a resumed run
does not redo it with different weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

from clusterclr import distributed
from clusterclr.augment import ViewMaker
from clusterclr.errors import UserError
from clusterclr.losses.contrastive import nt_xent
from clusterclr.models.backbones import ResNet
from clusterclr.positives.views import same_image


class MethodOptions(BaseModel):
    """Base for a method's options (the ``method:`` section of a config)."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class DataInfo:
    """What a method may need to know about its training data."""

    num_images: int
    num_classes: int | None  # None for unlabelled data; never used for training
    channels: int
    image_size: tuple[int, int]


@dataclass
class Batch:
    views: list[torch.Tensor]  # augmented views, each N×C×H×W, normalised
    indices: torch.Tensor  # the images' rows in the training set
    clean: torch.Tensor | None = None  # the non-augmented view, when the method asks for it


@dataclass
class TrainingImages:
    """The training set as a method sees it between epochs: clean views, encoded on demand.

    ``labels`` serve diagnostics only (pair precision, pseudo-label NMI);
    no method may let them into a loss.
    """

    images: torch.Tensor  # uint8 N×C×H×W on the host, rows in training-set order
    labels: torch.Tensor | None
    views: ViewMaker
    device: torch.device
    batch_size: int
    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False
    seed: int = 0  # the run's seed, for the hooks' own randomness (k-means restarts)

    def __len__(self) -> int:
        return len(self.images)

    @torch.no_grad()
    def encode(
        self, encoder: Callable[[torch.Tensor], torch.Tensor], *modules: nn.Module, batch_statistics: bool = False
    ) -> torch.Tensor:
        """``encoder`` over the clean view of every image, in order: N × D float32 on the device.

        ``modules`` (those ``encoder`` runs) are put in eval mode for the pass,
        so batch norm uses its running statistics. ``batch_statistics=True``
        keeps them in training mode instead, so features are on the scale the
        loss sees them during training (which matters before the running
        statistics have been learnt); their buffers are restored afterwards.
        Either way nothing about training changes.
        """
        # Each rank of a distributed run encodes its shard and all get every feature. Shards may differ
        # by a row: the same number of chunks on every rank, so SyncBatchNorm (in batch-statistics
        # mode) meets the other ranks at every chunk.
        start, end = distributed.shard(len(self.images))
        rows = torch.arange(start, end)
        if distributed.world_size() == 1:
            chunks = rows.split(self.batch_size)
        else:
            longest_shard = -(-len(self.images) // distributed.world_size())
            chunks = rows.tensor_split(-(-longest_shard // self.batch_size))
        modes = [m.training for m in modules]
        saved = [{k: v.clone() for k, v in m.named_buffers()} for m in modules] if batch_statistics else []
        for m in modules:
            m.train(batch_statistics)
        autocast = torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)
        try:
            features = []
            for rows in chunks:
                x = self.views.clean(self.images[rows].to(self.device, non_blocking=True))
                x = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
                with autocast:
                    features.append(encoder(x).float())
            return distributed.gather_shards(torch.cat(features), len(self.images))
        finally:
            for m, mode in zip(modules, modes):
                m.train(mode)
            for m, buffers in zip(modules, saved):
                for name, value in m.named_buffers():
                    value.copy_(buffers[name])


@dataclass
class StepOutput:
    loss: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class GlobalViews:
    """The views of the global batch a rank contrasts its own views with (see ``distributed.py``)."""

    embeddings: torch.Tensor  # V·G × D, view-major over the G images of every rank (or of this one alone)
    indices: torch.Tensor  # the G images' training-set rows
    anchors: torch.Tensor  # the rows of ``embeddings`` that are this rank's views
    num_views: int

    @classmethod
    def of(cls, z: torch.Tensor, indices: torch.Tensor, num_views: int, across_ranks: bool) -> GlobalViews:
        """``z``: this rank's V·n view-major embeddings; ``across_ranks``: take every rank's views as candidates."""
        if not across_ranks or distributed.world_size() == 1:
            return cls(z, indices, torch.arange(len(z), device=z.device), num_views)
        return cls(
            distributed.gather_views(z, num_views),
            distributed.gather(indices),
            distributed.local_view_rows(len(indices), num_views, z.device),
            num_views,
        )

    def nt_xent(self, temperature: float, positives: torch.Tensor | None = None) -> torch.Tensor:
        """NT-Xent of this rank's views against all; ``positives`` (V·G × V·G) default to the same image's views."""
        if positives is None:
            positives = same_image(len(self.indices), self.num_views, device=self.embeddings.device)
        return nt_xent(self.embeddings, positives[self.anchors], temperature, self.anchors)


class Method(nn.Module):
    name: ClassVar[str]
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    num_views: ClassVar[int] = 2
    needs_clean_view: ClassVar[bool] = False
    # Some steps leave parameters out of the loss (DistributedDataParallel must then look for them).
    has_idle_parameters: ClassVar[bool] = False
    # In a distributed run: contrast with every rank's views and keys, not this rank's alone (train.gather_negatives).
    gather_negatives: bool = True
    # The attribute holding the module behind ``cluster_probabilities``, for methods that own a
    # cluster head: evaluated by the head protocol and exported with the backbone.
    cluster_head_attribute: ClassVar[str | None] = None

    def __init__(self, backbone: ResNet, options: MethodOptions, data: DataInfo) -> None:
        super().__init__()
        self.backbone = backbone
        self.options = options
        self.data = data

    def training_step(self, batch: Batch) -> StepOutput:
        raise NotImplementedError

    def forward(self, batch: Batch) -> StepOutput:
        # The step is the forward pass, so DistributedDataParallel can wrap a method.
        return self.training_step(batch)

    def after_optimizer_step(self, progress: float) -> None:
        """Hook for state that follows the weights (EMA, queues); ``progress`` runs 0 → 1 over training."""

    def on_epoch_start(self, epoch: int, images: TrainingImages) -> dict[str, Any]:
        """Work over the whole training set before epoch ``epoch`` (0-based); returns values to log.

        Must be deterministic (seed any randomness from ``images.seed`` and
        ``epoch``): a run resumed from an epoch boundary calls it again there.
        A run resumed mid-epoch does not; it has the hook's results from the
        checkpoint's buffers.
        """
        return {}

    def epoch_order(self) -> torch.Tensor:
        """The order an epoch visits the training images in, drawn from the global RNG."""
        return torch.randperm(self.data.num_images)

    def parameters_without_weight_decay(self) -> list[nn.Parameter]:
        """Parameters the optimiser must never decay (learnable cluster centres, prototypes)."""
        return []

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Features used for evaluation and export: the backbone's pooled output."""
        return self.backbone(images)

    def cluster_head_module(self) -> nn.Module | None:
        return None if self.cluster_head_attribute is None else getattr(self, self.cluster_head_attribute)

    @torch.no_grad()
    def cluster_probabilities(self, features: torch.Tensor) -> torch.Tensor | None:
        """Soft cluster assignments (N × K) from ``embed``'s features, for methods that own a cluster head."""
        return None


def cluster_count(requested: int | None, data: DataInfo) -> int:
    """The number of clusters a method's head has: ``requested``, else the number of classes."""
    if requested is None:
        if data.num_classes is None:
            raise UserError("the training data has no labels to count clusters from: set method.clusters=K")
        requested = data.num_classes
    if requested > data.num_images:
        raise UserError(f"method.clusters={requested} exceeds the {data.num_images} training images")
    return requested


def normalised_std(z: torch.Tensor) -> torch.Tensor:
    """Collapse diagnostic: per-dimension std of L2-normalised outputs, averaged.

    About 1/sqrt(dim) for well-spread outputs, 0 when every input maps to one
    point (Chen & He, 2021, Fig. 2).
    """
    return F.normalize(z.detach().float(), dim=1).std(dim=0).mean()


def clusters_used(assignments: torch.Tensor) -> torch.Tensor:
    """Collapse diagnostic for a cluster head: how many of the K clusters are some row's argmax.

    Computed on the device (no host sync), from N × K assignments.
    """
    hits = torch.zeros(assignments.shape[1], device=assignments.device)
    hits.index_fill_(0, assignments.detach().argmax(1), 1.0)
    return hits.sum()
