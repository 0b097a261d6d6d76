"""The shared part of methods with a momentum encoder: MoCo's key encoder, BYOL's target network.

A ``MomentumMethod`` keeps an EMA copy of its backbone and projector
(``models/momentum.py``) and moves it after every optimiser step with the
momentum of its options, constant or rising to 1 along a cosine.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field
from torch import nn

from clusterclr.config import MethodOptions
from clusterclr.methods.base import DataInfo, Method
from clusterclr.models.momentum import MomentumEncoder, momentum_at


class MomentumOptions(MethodOptions):
    momentum: float = Field(0.999, ge=0, le=1)
    momentum_schedule: Literal["constant", "cosine"] = "constant"


class MomentumMethod(Method):
    # Checkpoints written before the momentum encoder had one name (clusterclr 0.1) load too.
    legacy_state_prefixes: ClassVar[dict[str, str]] = {"key_encoder.": "momentum_encoder.", "target.": "momentum_encoder."}

    def __init__(
        self, backbone: nn.Module, options: MomentumOptions, data: DataInfo, projector: nn.Module, gather_negatives: bool = True
    ) -> None:
        super().__init__(backbone, options, data, gather_negatives)
        self.projector = projector
        self.momentum_encoder = MomentumEncoder(self.backbone, self.projector)

    def after_optimizer_step(self, progress: float) -> None:
        momentum = momentum_at(self.options.momentum, progress, self.options.momentum_schedule)
        self.momentum_encoder.update(self.backbone, self.projector, momentum=momentum)
