"""What an evaluation looks at: a trained model and a (bank, test) pair of splits, with the frozen
features of each and the k-means fits on the bank computed once and shared by everything that needs them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F

from clusterclr.build import Model, Parts
from clusterclr.clustering.kmeans import KMeansResult, kmeans
from clusterclr.data.base import ImageDataset
from clusterclr.errors import UserError
from clusterclr.evaluate.features import Embeddings, embed
from clusterclr.stage.choose_k import KChoice, choose_k


@dataclass
class EvalContext:
    model: Model
    dataset: str
    bank: ImageDataset  # training images: kNN bank, probe and k-means fit, labelled subsets
    test: ImageDataset  # where every score is reported
    eval_split: str  # "test", "holdout" (the data set has no test split) or "train" (nor labels)
    clusters: int | str  # k-means K unless a protocol is told otherwise; "auto": chosen on the bank's features
    progress: bool = True
    conversions: list[str] = field(default_factory=list)  # what was done to the images to fit the model
    choice: KChoice | None = None  # how K was chosen, when it was
    _embeddings: dict[str, Embeddings] = field(default_factory=dict, repr=False)
    _fits: dict[tuple[int, int], KMeansResult] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.clusters == "auto":
            cfg = self.model.config.eval
            low, high = cfg.auto_clusters
            features = self.embeddings("bank").features
            self.choice = choose_k(features, low, min(high, len(features) - 1), cfg.auto_criterion, seed=self.model.config.seed)
            self.clusters = self.choice.chosen

    @classmethod
    def of(cls, parts: Parts, progress: bool = True) -> EvalContext:
        """The run's own evaluation: its labelled train split as the bank, its evaluation split scored."""
        splits = parts.splits
        return cls(parts, splits.name, splits.bank, splits.test, splits.eval_split, parts.clusters, progress)

    @property
    def labelled(self) -> bool:
        return self.bank.labels is not None and self.test.labels is not None

    def require_labels(self) -> None:
        if not self.labelled:
            raise UserError(f"data set '{self.dataset}' has no labels; the evaluation protocols score against classes")

    @property
    def num_classes(self) -> int:
        return int(max(self.bank.labels.max(), self.test.labels.max())) + 1

    def embeddings(self, split: str) -> Embeddings:
        """Frozen backbone features (and cluster-head probabilities) of ``split``: "bank" or "test"."""
        if split not in self._embeddings:
            other = "test" if split == "bank" else "bank"
            same = self.bank is self.test and other in self._embeddings  # one data set clustered alone: embedded once
            self._embeddings[split] = self._embeddings[other] if same else embed(self.model, getattr(self, split))
        return self._embeddings[split]

    def set_embeddings(self, split: str, embeddings: Embeddings) -> None:
        """Use ``embeddings`` for ``split`` instead of computing them (features from elsewhere)."""
        self._embeddings[split] = embeddings
        if self.bank is self.test:
            self._embeddings["test" if split == "bank" else "bank"] = embeddings

    def kmeans(self, clusters: int, seed: int) -> KMeansResult:
        """k-means on the L2-normalised bank features, as every evaluation fits it."""
        if clusters > len(self.bank):
            raise UserError(f"cannot make {clusters} clusters of the {len(self.bank)} training images of {self.dataset}")
        if (clusters, seed) not in self._fits:
            cfg = self.model.config.eval
            features = F.normalize(self.embeddings("bank").features.float(), dim=1).numpy()
            self._fits[clusters, seed] = kmeans(features, clusters, seed=seed, niter=cfg.kmeans_iterations, restarts=cfg.kmeans_restarts)
        return self._fits[clusters, seed]
