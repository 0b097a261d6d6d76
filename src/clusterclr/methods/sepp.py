r"""Semantic positive pairs (SePP; Alkhalefi et al., TMLR 2024) on MoCo v2, SimSiam and SimCLR.

Each method is its base method plus the ``SemanticPositives`` mixin, which
mines each image's most similar other images (``positives.*``) and orders
epochs so that partners share batches. The only change to the loss is who
counts as positive (each base method's positives hook), ``partners`` below
being the B × B mask of mined partners in the batch:

- ``sepp_simclr``: NT-Xent where a view's positives are the other views of
  its image and every view of its partners (multi-positive InfoNCE).
- ``sepp_moco_v2``: InfoNCE where a query's positives are its own key and
  its partners' keys; the queue stays negatives only.

  In both, ``positives.partner_share`` (default 0.5) is the partners' part
  of each anchor's positive weight, its own image's views keeping the
  rest; None weighs every positive the same, as the paper does, which left
  an image's own view a third of the weight with one partner (a fifth with
  two), although most mined partners are of another class.
- ``sepp_simsiam``: SimSiam's loss plus ``partner_weight`` times an
  attraction term, SimSiam's own loss between partners:

  .. math::

      \mathcal{L}_{pair} = \frac{1}{|P|} \sum_{(a, b) \in P}
          \tfrac12 \left[ \mathcal{D}(p^{(1)}_a, z^{(2)}_b) + \mathcal{D}(p^{(2)}_a, z^{(1)}_b) \right]

  over the ordered pairs :math:`P` of the mask (both directions), with
  :math:`\mathcal{D}(p, z) = -\cos(p, \mathrm{sg}(z))`; zero when a batch
  holds no pair.

With no pairs mined (the warm-up epochs), each equals its base method.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat

from clusterclr import distributed
from clusterclr.losses.negative_cosine import negative_cosine
from clusterclr.methods.base import Batch, StepOutput
from clusterclr.methods.diagnostics import normalised_std
from clusterclr.methods.global_views import GlobalViews
from clusterclr.methods.moco_v2 import MoCoV2
from clusterclr.methods.registry import register_method
from clusterclr.methods.simclr import SimCLR
from clusterclr.methods.simsiam import SimSiam, SimSiamOptions
from clusterclr.positives.sampler import SemanticPositives
from clusterclr.positives.semantic import (
    own_key_or_partners,
    partner_mask,
    same_image_or_partners,
)
from clusterclr.positives.views import Positives


def _partner_logs(partners: torch.Tensor) -> dict[str, torch.Tensor]:
    # Partners per image in the batch: near 1 when pairs meet as partner_order intends.
    return {"batch_partners": partners.sum(1).float().mean()}


@register_method
class SePPSimCLR(SemanticPositives, SimCLR):
    """SePP-SimCLR: SimCLR's NT-Xent with every view of an image's mined semantic partners as extra positives."""

    name = "sepp_simclr"

    def positive_pairs(self, views: GlobalViews) -> Positives:
        partners = partner_mask(views.indices, self.partners)
        mask = same_image_or_partners(partners, views.num_views, self.positives.partner_share)
        return Positives(mask, _partner_logs(partners))


@register_method
class SePPMoCoV2(SemanticPositives, MoCoV2):
    """SePP-MoCo v2: MoCo v2's InfoNCE with the keys of a query's mined semantic partners as extra positives."""

    name = "sepp_moco_v2"

    def positive_keys(self, batch: Batch, num_candidates: int, own: int) -> Positives:
        key_images = distributed.gather(batch.indices) if self.gather_negatives else batch.indices
        partners = partner_mask(batch.indices, self.partners, key_images)
        mask = own_key_or_partners(partners, num_candidates, own, self.positives.partner_share)
        return Positives(mask, _partner_logs(partners))


class SePPSimSiamOptions(SimSiamOptions):
    # Weight of the attraction between partners, relative to SimSiam's own loss.
    partner_weight: NonNegativeFloat = 1.0


def partner_negative_cosine(predictions: torch.Tensor, targets: torch.Tensor, partners: torch.Tensor) -> torch.Tensor:
    """Mean of D(predictions[a], targets[b]) over the pairs (a, b) of the A × G mask ``partners``; 0 without pairs.

    Computed densely (A × G cosines) rather than by indexing the pairs, so
    the step never waits on the device to count them. In a distributed run
    ``predictions`` are this rank's, ``targets`` every rank's, and the mean
    is over the pairs of all ranks (``distributed.global_mean_share``).
    """
    with torch.autocast(predictions.device.type, enabled=False):
        cosines = F.normalize(predictions.float(), dim=1) @ F.normalize(targets.detach().float(), dim=1).T
    mask = partners.float()
    return distributed.global_mean_share(-(cosines * mask).sum(), mask.sum())


@register_method
class SePPSimSiam(SemanticPositives, SimSiam):
    """SePP-SimSiam: SimSiam's loss plus the same loss between an image and its mined semantic partners."""

    name = "sepp_simsiam"
    Options = SePPSimSiamOptions
    weighs_by_share = False  # its partner term has its own weight, method.partner_weight

    def training_step(self, batch: Batch) -> StepOutput:
        z1, z2 = (self.projector(self.backbone(view)) for view in batch.views)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        instance = (negative_cosine(p1, z2) + negative_cosine(p2, z1)) / 2
        # Targets are detached: every rank's, without a gradient-preserving gather.
        targets1, targets2 = distributed.gather(z1.detach()), distributed.gather(z2.detach())
        partners = partner_mask(batch.indices, self.partners, distributed.gather(batch.indices))
        pairs = (partner_negative_cosine(p1, targets2, partners) + partner_negative_cosine(p2, targets1, partners)) / 2
        loss = instance + self.options.partner_weight * pairs
        logs = {"loss": loss.detach(), "pair_loss": pairs.detach(), "output_std": normalised_std(z1)}
        return StepOutput(loss, {**logs, **_partner_logs(partners)})
