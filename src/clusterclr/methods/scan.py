r"""SCAN end to end (Van Gansbeke et al., ECCV 2020): the backbone fine-tuned with cluster heads on neighbour pairs.

A run trained by any method mines each image's nearest neighbours in its
features (``positives.encoder``: that run; mined once, ``positives/``),
and this method fine-tunes that backbone (``--init``) with ``heads``
softmax cluster heads so that an augmented view of an image and an
augmented view of each of its neighbours in the batch (and of itself)
agree, while the mean prediction stays spread over the clusters
(``losses/scan.py``, per head):

.. math::

    \mathcal{L}_h = -\frac{1}{|P|} \sum_{(a, b) \in P} \log \langle p_h(v_1(a)), p_h(v_2(b)) \rangle
        \;-\; \lambda\, H\big(\tfrac{1}{B} \textstyle\sum_a p_h(v_1(a))\big)

over the pairs :math:`P` of the batch (an image with itself and with its
mined neighbours). The heads train together; the one whose loss over the
last clustering epoch was lowest is kept. After ``cluster_epochs``, the
kept head self-labels: its confident predictions on the clean view
(probability above ``confidence``) are the labels of a class-balanced
cross-entropy on an augmented view, the backbone still training. Without
``cluster_epochs`` every epoch clusters.

``clusterclr stage RUN_DIR --end-to-end`` sets all of this up.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt
from torch import nn

from clusterclr import distributed
from clusterclr.config import MethodOptions
from clusterclr.losses.scan import mean_prediction_entropy, self_label_loss
from clusterclr.methods.base import Batch, DataInfo, Method, StepOutput
from clusterclr.methods.diagnostics import clusters_used
from clusterclr.methods.registry import register_method
from clusterclr.methods.training_images import TrainingImages
from clusterclr.models.cluster_heads import MultiHeadClassifier, lowest_loss_head
from clusterclr.optim import ParameterGroup
from clusterclr.positives.sampler import SemanticPositives
from clusterclr.positives.semantic import partner_mask


class SCANOptions(MethodOptions):
    heads: PositiveInt = 10
    head_clusters: int | None = Field(None, ge=2)  # K' outputs per head; None: K
    hidden_dim: PositiveInt | None = None  # None: linear heads, as in the paper
    entropy_weight: NonNegativeFloat = 5.0
    cluster_epochs: PositiveInt | None = None  # then self-labelling; None: no self-labelling
    confidence: float = Field(0.99, ge=0, lt=1)
    # The heads' rate as a multiple of the backbone's. The paper trains both at Adam's 1e-4 over thousands of
    # steps; `clusterclr stage --end-to-end` gives fresh heads the frozen stage's rate instead (stage.lr).
    head_lr_scale: PositiveFloat = 1.0


def pair_consistency(anchors: torch.Tensor, candidates: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Per head, the mean of −log⟨p(a), p(b)⟩ over the pairs of the A × G mask ``pairs``.

    ``anchors`` (H × A × K) and ``candidates`` (H × G × K) are logits; the
    dot products are computed densely (H × A × G), so the step never waits
    on the device to count pairs, and the mean spans every rank's pairs.
    """
    with torch.autocast(anchors.device.type, enabled=False):
        agreement = anchors.float().softmax(-1) @ candidates.float().softmax(-1).transpose(1, 2)
    mask = pairs.to(agreement.dtype)
    total = -(agreement.clamp_min(1e-7).log() * mask).sum((1, 2))
    return distributed.global_mean_share(total, mask.sum())


def _every_rank(logits: torch.Tensor) -> torch.Tensor:
    """Heads' logits H × n × K of this rank's images -> H × G × K of every rank's (gradients flow back)."""
    return distributed.gather(logits.transpose(0, 1)).transpose(0, 1)


@register_method
class SCAN(SemanticPositives, Method):
    """SCAN: cluster heads on neighbour pairs of a trained run's features, backbone fine-tuned, then self-labelling."""

    name = "scan"
    Options = SCANOptions
    needs_clean_view = True  # the self-labelling phase takes its labels from it
    has_idle_parameters = True  # the heads not kept, while self-labelling
    cluster_head_attribute = "heads"
    # SCAN's k nearest neighbours as they are (no mutual or quantile filter); its loss has no partner share.
    positives_defaults: ClassVar[dict[str, Any]] = {"neighbours": 20, "mutual": False}
    weighs_by_share = False

    def __init__(self, backbone: nn.Module, options: SCANOptions, data: DataInfo, gather_negatives: bool = True, **mining: Any) -> None:
        super().__init__(backbone, options, data, gather_negatives, **mining)
        clusters = options.head_clusters or data.required_clusters()
        self.heads = MultiHeadClassifier(backbone.feature_dim, clusters, options.heads, options.hidden_dim)
        # Per head, the summed loss and steps of the epoch so far, and the last finished clustering epoch's mean:
        # buffers, so a run resumed mid-epoch chooses the same head.
        self.register_buffer("loss_sum", torch.zeros(options.heads))
        self.register_buffer("loss_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("head_losses", torch.full((options.heads,), float("nan")))
        self.register_buffer("self_labelling", torch.tensor(False))

    def parameter_groups(self) -> list[ParameterGroup]:
        return [ParameterGroup("heads", tuple(self.heads.parameters()), self.options.head_lr_scale)]

    def on_epoch_start(self, epoch: int, images: TrainingImages) -> dict[str, Any]:
        logs = super().on_epoch_start(epoch, images)
        if not self.self_labelling and int(self.loss_steps):
            self.head_losses.copy_(self.loss_sum / self.loss_steps)
        self.loss_sum.zero_()
        self.loss_steps.zero_()
        cluster_epochs = self.options.cluster_epochs
        if cluster_epochs is not None and epoch >= cluster_epochs and not self.self_labelling:
            self.self_labelling.fill_(True)
            logs["kept_head"] = self.kept_head()
        return {**logs, "head_losses": [round(float(v), 4) for v in self.head_losses]}

    def kept_head(self) -> int:
        """The lowest-loss head of the last clustering epoch (head 0 before one has ended)."""
        return lowest_loss_head(torch.nan_to_num(self.head_losses, nan=float("inf")))

    def training_step(self, batch: Batch) -> StepOutput:
        if self.self_labelling:
            return self._self_label(batch)
        first, second = self.heads(self.backbone(torch.cat(batch.views))).chunk(2, dim=1)
        images = distributed.gather(batch.indices)
        pairs = partner_mask(batch.indices, self.partners, images) | (batch.indices[:, None] == images[None, :])
        consistency = pair_consistency(first, _every_rank(second), pairs)
        entropy = mean_prediction_entropy(_every_rank(first).float())
        per_head = consistency - self.options.entropy_weight * entropy
        self.loss_sum += per_head.detach()
        self.loss_steps += 1
        loss = per_head.sum()
        kept = self.kept_head()
        return StepOutput(loss, {
            "loss": loss.detach(), "consistency": consistency[kept].detach(), "entropy": entropy[kept].detach(),
            "pairs_per_image": pairs.float().sum(1).mean(), "clusters_used": clusters_used(first[kept]),
        })

    def _self_label(self, batch: Batch) -> StepOutput:
        head = self.kept_head()
        strong = self.heads(self.backbone(batch.views[0]))[head]
        with torch.no_grad():
            weak = self.heads(self.backbone(batch.clean))[head]
        result = self_label_loss(strong, weak, self.options.confidence)
        return StepOutput(result.loss, {"loss": result.loss.detach(), "confident": result.confident.detach()})

    @torch.no_grad()
    def cluster_probabilities(self, features: torch.Tensor) -> torch.Tensor:
        return self.heads(features)[self.kept_head()].float().softmax(-1)
