"""What every protocol evaluates: a trained model and a labelled (bank, test) pair of splits,
with the frozen features of each extracted once and shared by the protocols that need them."""

from __future__ import annotations

from dataclasses import dataclass, field

from clusterclr.build import Model
from clusterclr.data.base import ImageDataset
from clusterclr.errors import UserError
from clusterclr.evaluate.features import Embeddings, embed_dataset


@dataclass
class EvalContext:
    model: Model
    dataset: str
    bank: ImageDataset  # labelled training images: kNN bank, probe and k-means fit, labelled subsets
    test: ImageDataset  # where every score is reported
    eval_split: str  # "test", or "holdout" when the data set has no test split
    clusters: int  # k-means K unless --clusters says otherwise
    progress: bool = True
    conversions: list[str] = field(default_factory=list)  # what was done to the images to fit the model
    _embeddings: dict[str, Embeddings] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.bank.labels is None or self.test.labels is None:
            raise UserError(f"data set '{self.dataset}' has no labels; the evaluation protocols score against classes")

    @property
    def num_classes(self) -> int:
        return int(max(self.bank.labels.max(), self.test.labels.max())) + 1

    def embeddings(self, split: str) -> Embeddings:
        """Frozen backbone features (and cluster-head probabilities) of ``split``: "bank" or "test"."""
        if split not in self._embeddings:
            cfg = self.model.config
            self._embeddings[split] = embed_dataset(
                self.model.method, self.model.views, getattr(self, split), self.model.device,
                cfg.eval.batch_size, self.model.autocast_dtype, cfg.train.channels_last,
            )
        return self._embeddings[split]
