"""The clustering stage on frozen features: train many cluster heads on mined neighbours, keep the best, self-label.

Phases, in order:

1. ``cluster``: ``epochs`` passes of SCAN or TEMI. Each epoch draws a
   permutation of the images and, for each image, one of its k neighbours;
   a step takes the next ``batch_size`` anchors of the permutation with
   their drawn neighbours, and the heads' losses are summed, so every head
   gets the gradient it would get alone.
2. Selection: every head's loss over all images and all their neighbours,
   with the final weights; the lowest-loss head is kept (the labels are
   never looked at). It pays: on digits' SimCLR features (10 heads, 3 seeds
   each of SCAN and TEMI) the kept head was the most accurate in 4 runs of
   6 and 2nd or 3rd otherwise (ACC 0.91–0.97), the median head 0.82–0.90.
3. ``self_label``: ``self_label_epochs`` of self-labelling of the kept head
   (see :mod:`clusterclr.stage.self_label`), when asked for.

Determinism and resuming: an epoch's draws come from a generator seeded by
(seed, phase, epoch), never from the global RNG, so a state saved between
any two steps (:meth:`ClusterStage.state_dict`: phase, epoch, step, heads,
teacher, marginal, optimiser) and loaded into a stage built from the same
features and options continues exactly as if never stopped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from clusterclr.config import StageConfig
from clusterclr.errors import UserError
from clusterclr.models.cluster_heads import MultiHeadClassifier, lowest_loss_head
from clusterclr.progress import progress_bar
from clusterclr.stage.graph import NeighbourGraph, check_features, neighbour_graph
from clusterclr.stage.head import StageHead
from clusterclr.stage.scan_objective import ScanObjective
from clusterclr.stage.self_label import SelfLabelObjective
from clusterclr.stage.temi_objective import TemiObjective

STATE_FORMAT = 1
PHASES = ("cluster", "self_label", "done")


@dataclass(frozen=True)
class StageResult:
    """What the stage found for each of the N images it was trained on.

    ``assignments`` (N,) int64 cluster of each image under the kept head;
    ``confidences`` (N,) its probability; ``probabilities`` N × K';
    ``head_losses`` (H,) every head's final loss (the selection criterion);
    ``kept_head`` the index of the lowest.
    """

    assignments: torch.Tensor
    confidences: torch.Tensor
    probabilities: torch.Tensor
    head_losses: torch.Tensor
    kept_head: int


class ClusterStage:
    """``clusters`` cluster heads' outputs trained on frozen ``features`` (N × D) with ``options``, drawing from
    ``seed``; ``fit`` runs (or continues) them.

    ``graph``: a neighbour graph already mined from these features with at
    least ``options.neighbours`` neighbours (its first columns are used);
    mined here otherwise. Everything runs on the features' device.
    """

    def __init__(
        self, features: torch.Tensor, options: StageConfig, clusters: int, seed: int = 0, graph: NeighbourGraph | None = None
    ) -> None:
        check_features(features)
        n, dim = features.shape
        if clusters < 2:
            raise UserError(f"the clustering stage needs at least 2 clusters, got {clusters}")
        if clusters > n:
            raise UserError(f"cannot make {clusters} clusters of {n} images")
        if graph is None:
            graph = neighbour_graph(features, options.neighbours)
        elif graph.indices.shape[0] != n or graph.neighbours < options.neighbours or (graph.indices < 0).any():
            raise ValueError(f"the neighbour graph must give {options.neighbours} neighbours for each of {n} images")
        self.options, self.clusters, self.seed = options, clusters, seed
        self.device = features.device
        self.mean = features.detach().float().mean(dim=0)
        self.inputs = self._prepare(features)
        self.graph = NeighbourGraph(*(t[:, : options.neighbours].to(self.device) for t in graph))
        self.batch_size = min(options.batch_size, n)
        self.steps_per_epoch = n // self.batch_size  # a last partial batch is dropped; the next epoch reshuffles
        generator = torch.Generator().manual_seed(seed)
        heads = MultiHeadClassifier(dim, clusters, options.heads, options.hidden_dim, options.loss == "temi", generator).to(self.device)
        self.objective: ScanObjective | TemiObjective | SelfLabelObjective = (
            ScanObjective(heads, options.entropy_weight)
            if options.loss == "scan"
            else TemiObjective(
                heads, options.beta, options.student_temperature, options.teacher_temperature, options.teacher_momentum, options.marginal_momentum
            )
        )
        self.optimizer = self._optimizer(options.lr)
        self.phase, self.epoch, self.step = "cluster", 0, 0
        self.head_losses: torch.Tensor | None = None
        self.kept_head: int | None = None

    # -- training -------------------------------------------------------------------------

    @property
    def total_steps(self) -> int:
        return (self.options.epochs + self.options.self_label_epochs) * self.steps_per_epoch

    @property
    def steps_done(self) -> int:
        if self.phase == "done":
            return self.total_steps
        before = self.options.epochs if self.phase == "self_label" else 0
        return (before + self.epoch) * self.steps_per_epoch + self.step

    def fit(self, progress: bool = False, should_stop: Callable[[], bool] | None = None) -> bool:
        """Train until done, or until ``should_stop()`` (asked before every step) says so; True when done.

        ``progress``: a tqdm bar over the steps of both phases, with rate,
        ETA and the last epoch's mean loss.
        """
        with progress_bar(total=self.total_steps, initial=self.steps_done, unit="step", desc="clustering stage", enabled=progress) as bar:
            while self.phase != "done":
                if self.epoch >= self._phase_epochs():
                    self._next_phase()
                    continue
                order, picks = self._epoch_draws()
                loss_sum, counted = torch.zeros((), device=self.device), 0
                while self.step < self.steps_per_epoch:
                    if should_stop is not None and should_stop():
                        return False
                    rows = order[self.step * self.batch_size : (self.step + 1) * self.batch_size]
                    neighbours = self.graph.indices[rows, picks[rows]]
                    losses = self.objective.batch_losses(self.inputs[rows], self.inputs[neighbours])
                    self.optimizer.zero_grad(set_to_none=True)
                    losses.sum().backward()
                    self.optimizer.step()
                    self.objective.after_step()
                    loss_sum += losses.detach().mean()
                    counted += 1
                    self.step += 1
                    bar.update()
                # Checked once an epoch: a check per step would wait on the device every step.
                epoch_loss = float(loss_sum) / max(counted, 1)
                if not math.isfinite(epoch_loss):
                    raise FloatingPointError(f"the {self.phase} loss of epoch {self.epoch + 1} is {epoch_loss}; try a lower learning rate")
                bar.set_postfix(phase=self.phase, loss=f"{epoch_loss:.4f}", refresh=False)
                self.epoch, self.step = self.epoch + 1, 0
        return True

    def _phase_epochs(self) -> int:
        return self.options.epochs if self.phase == "cluster" else self.options.self_label_epochs

    def _epoch_draws(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This epoch's order of anchors and each image's drawn neighbour column, from (seed, phase, epoch) alone."""
        seed = (self.seed * 1_000_003 + PHASES.index(self.phase) * 1_000_033 + self.epoch) % 2**63
        generator = torch.Generator().manual_seed(seed)
        n = len(self.inputs)
        order = torch.randperm(n, generator=generator)
        picks = torch.randint(self.graph.neighbours, (n,), generator=generator)
        return order.to(self.device), picks.to(self.device)

    def _next_phase(self) -> None:
        if self.phase == "cluster":
            self.head_losses = self.objective.evaluate(self.inputs, self.graph).double().cpu()
            self.kept_head = lowest_loss_head(self.head_losses)
            temperature = self.objective.prediction_temperature
            self.objective = SelfLabelObjective(self.objective.predictor().keep(self.kept_head), temperature, self.options.confidence)
            self.objective.head.requires_grad_(True)
            self.optimizer = self._optimizer(self.options.self_label_lr)
            self.phase = "self_label"
        else:
            self.phase = "done"
        self.epoch, self.step = 0, 0

    def _optimizer(self, lr: float) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.objective.trainable().parameters(), lr=lr, weight_decay=self.options.weight_decay)

    # -- results ------------------------------------------------------------------------

    def _prepare(self, features: torch.Tensor) -> torch.Tensor:
        """Centred on the training features' mean and L2-normalised, as the neighbour graph compares them."""
        return torch.nn.functional.normalize(features.detach().float().to(self.device) - self.mean, dim=1)

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """Cluster probabilities (M × K') of any features (M × D) under the kept head, once it is chosen."""
        return self._probabilities(self._prepare(features))

    def result(self) -> StageResult:
        """The training images' clusters; the stage must have finished (``fit`` returned True)."""
        if self.phase != "done":
            raise RuntimeError(f"the stage is in its {self.phase} phase; fit it to the end first")
        probabilities = self._probabilities(self.inputs)
        confidences, assignments = probabilities.max(dim=1)
        return StageResult(assignments.cpu(), confidences.cpu(), probabilities.cpu(), self.head_losses, self.kept_head)

    def head_module(self) -> StageHead:
        """The kept head as a module on raw features (what ``predict`` computes), for a run's model to cluster with."""
        if self.phase != "done":
            raise RuntimeError(f"the stage is in its {self.phase} phase; fit it to the end first")
        return StageHead(self.objective.predictor(), self.mean, self.objective.prediction_temperature).eval()

    @torch.no_grad()
    def _probabilities(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.kept_head is None:
            raise RuntimeError("no head is kept before the clustering phase ends; call fit first")
        logits = self.objective.predictor()(inputs)[0]
        return (logits / self.objective.prediction_temperature).softmax(-1)

    # -- checkpoints ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything that changes while fitting, to continue exactly; the features and graph are not included."""
        return {
            "format": STATE_FORMAT,
            "options": self._settings(),
            "shape": tuple(self.inputs.shape),
            "mean": self.mean.cpu(),
            "phase": self.phase,
            "epoch": self.epoch,
            "step": self.step,
            "head_losses": self.head_losses,
            "kept_head": self.kept_head,
            "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }

    def _settings(self) -> dict[str, Any]:
        return {**self.options.model_dump(), "clusters": self.clusters, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``, saved by a stage built from the same features and options."""
        if state.get("format") != STATE_FORMAT:
            raise UserError(f"not a clustering-stage state of format {STATE_FORMAT} (found format {state.get('format')})")
        changed = sorted(k for k, v in self._settings().items() if state["options"].get(k) != v)
        if changed:
            raise UserError(f"the saved clustering stage was run with other options ({', '.join(changed)}); resume with the same ones")
        if tuple(state["shape"]) != tuple(self.inputs.shape) or not torch.equal(state["mean"], self.mean.cpu()):
            raise UserError(f"the saved clustering stage was run on other features (shape {tuple(state['shape'])})")
        if state["phase"] != "cluster":
            # Past the selection the trained object is the kept head alone.
            head = MultiHeadClassifier(self.inputs.shape[1], self.clusters, 1, self.options.hidden_dim, self.options.loss == "temi").to(self.device)
            self.objective = SelfLabelObjective(head, self.objective.prediction_temperature, self.options.confidence)
            self.optimizer = self._optimizer(self.options.self_label_lr)
        self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.phase, self.epoch, self.step = state["phase"], state["epoch"], state["step"]
        self.head_losses, self.kept_head = state["head_losses"], state["kept_head"]
