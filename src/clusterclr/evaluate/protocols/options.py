"""The settings of every protocol, as one value the command line fills in."""

from __future__ import annotations

from dataclasses import dataclass, field

from clusterclr.config import DataConfig
from clusterclr.evaluate.finetune import FinetuneOptions
from clusterclr.evaluate.linear import WEIGHT_DECAYS


@dataclass(frozen=True)
class ProtocolOptions:
    knn_k: tuple[int, ...] | None = None  # None: the run's eval.knn_k
    knn_temperature: float | None = None  # None: the run's eval.knn_temperature
    clusters: tuple[int, ...] | None = None  # k-means K values; None: the run's evaluation K
    weight_decays: tuple[float, ...] = WEIGHT_DECAYS
    semi_fractions: tuple[float, ...] = (0.01, 0.1)
    finetune: FinetuneOptions = field(default_factory=FinetuneOptions)
    transfer_data: DataConfig | None = None  # the data set B of --protocol transfer
