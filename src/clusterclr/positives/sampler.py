"""The semantic sampler: mines partners on a schedule and orders epochs so partners meet.

``SemanticPositives`` is a mixin for any instance method: list it before the
method's class (``class SePPSimCLR(SemanticPositives, SimCLR)``) and the
method gets

- ``self.partners``, an N × k buffer of each training image's mined
  partners (-1 where none), so checkpoints carry it and a resumed run
  trains on the same pairs;
- mining in ``on_epoch_start``: after ``positives.warmup_epochs`` plain
  epochs and then every ``positives.refresh_every`` epochs (or once) with
  the model being trained (``mining_encoder``: its backbone, its momentum
  encoder, or an EMA copy of its backbone kept for mining alone), or once,
  before the first epoch, with a trained run or a pretrained weights file
  the user gives (``positives.encoder``, which ``build`` hands in as a
  loader of a ``positives/encoders.py`` encoder); the epoch's diagnostics
  are logged;
- an ``epoch_order`` that puts partners next to each other.

The method itself only widens its positives hook with
``partner_mask(batch.indices, self.partners)``, weighed by
``positives.partner_share`` (see ``positives/semantic.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
from torch import nn

from clusterclr.config import PositivesConfig
from clusterclr.models.momentum import MomentumEncoder
from clusterclr.positives.semantic import (
    NO_PARTNER,
    mine_partners,
    pair_diagnostics,
    partner_order,
)

if TYPE_CHECKING:  # at run time the methods package imports this module, not the reverse
    from clusterclr.config import MethodOptions
    from clusterclr.methods.base import DataInfo
    from clusterclr.methods.training_images import TrainingImages


class TrainedEncoder(Protocol):
    """A trained network that mines instead of the model being trained (``positives/encoders.py``)."""

    def features(self, images: TrainingImages) -> torch.Tensor:
        """N × D features of every training image's clean view, in order."""


class SemanticPositives:
    """Mixin giving a ``Method`` subclass mined semantic partners (see the module docstring).

    ``positives_defaults``: the method's own defaults for the ``positives`` section.

    ``encoder_loader`` loads ``positives.encoder`` onto a device when it is
    first needed (``build`` hands it in; the model being trained mines when
    it is None).
    """

    positives_defaults: ClassVar[dict[str, Any]] = {}
    # Whether the method's loss weighs partners by ``positives.partner_share`` (its InfoNCE does).
    weighs_by_share: ClassVar[bool] = True

    def __init__(
        self,
        backbone: nn.Module,
        options: MethodOptions,
        data: DataInfo,
        gather_negatives: bool = True,
        *,
        positives: PositivesConfig,
        encoder_loader: Callable[[torch.device], TrainedEncoder] | None = None,
    ) -> None:
        super().__init__(backbone, options, data, gather_negatives)
        if (positives.encoder is None) != (encoder_loader is None):
            raise ValueError("positives.encoder and encoder_loader go together")
        self.positives = positives
        self.encoder_loader = encoder_loader
        self.register_buffer("partners", torch.full((data.num_images, positives.neighbours), NO_PARTNER, dtype=torch.long))
        own_momentum = getattr(self, "momentum_encoder", None)
        # An EMA copy of the backbone, for mining alone, where the method keeps none of its own.
        wanted = positives.mine_with == "momentum" and own_momentum is None and positives.encoder is None
        self.mining_ema = MomentumEncoder(self.backbone) if wanted else None

    def mining_encoder(self) -> tuple[Callable[[torch.Tensor], torch.Tensor], tuple[nn.Module, ...], bool]:
        """The network whose clean-image features are mined during training, the modules it runs, and
        whether it encodes with batch statistics.

        The backbone, not the projector: its features mine more same-class
        pairs (top-1 pair precision 0.37 vs 0.33 for SimCLR, 0.34 vs 0.31 for
        MoCo v2, trained 40 epochs on the CIFAR-10 subset). ``positives.mine_with``
        picks the online backbone or a momentum one: the method's momentum
        encoder (MoCo's), else the mining EMA, whose batch-norm running
        statistics never see a batch, so it normalises with the clean images' own.
        """
        own = getattr(self, "momentum_encoder", None)
        choice = self.positives.mine_with
        if choice == "online" or (choice == "auto" and own is None):
            return self.backbone, (self.backbone,), False
        if own is not None:
            return own.network[0], (own,), False
        return self.mining_ema, (self.mining_ema,), True

    def after_optimizer_step(self, progress: float) -> None:
        super().after_optimizer_step(progress)
        if self.mining_ema is not None:
            self.mining_ema.update(self.backbone, momentum=self.positives.momentum)

    def is_mining_epoch(self, epoch: int) -> bool:
        first = self.positives.first_mining_epoch()
        if epoch < first:
            return False
        if self.positives.encoder is not None or self.positives.refresh_every is None:
            return epoch == first  # a fixed encoder finds the same pairs every time
        return (epoch - first) % self.positives.refresh_every == 0

    def on_epoch_start(self, epoch: int, images: TrainingImages) -> dict[str, Any]:
        logs = super().on_epoch_start(epoch, images)
        if not self.is_mining_epoch(epoch):
            return logs
        p = self.positives
        features = self._features(images)
        pairs = mine_partners(features, p.neighbours, p.threshold, space=p.space, mutual=p.mutual, quantile=p.quantile)
        self.partners.copy_(pairs.partners)
        return {**logs, **pair_diagnostics(pairs, images.labels)}

    def epoch_order(self) -> torch.Tensor:
        return partner_order(self.partners)

    def _features(self, images: TrainingImages) -> torch.Tensor:
        if self.encoder_loader is None:
            encoder, modules, batch_statistics = self.mining_encoder()
            return images.encode(encoder, *modules, batch_statistics=batch_statistics)
        return self.encoder_loader(images.device).features(images)
