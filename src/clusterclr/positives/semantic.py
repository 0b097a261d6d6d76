r"""Semantic positive pairs (SePP; Alkhalefi et al., 2024): different images of the same kind.

Instance discrimination repels every other image, including those showing
the same kind of thing. SePP finds, for each training image :math:`i`, its
most similar *other* images in the embedding :math:`f` of an encoder run on
the clean (non-augmented) images,

.. math::

    \mathcal{N}_k(i) = \operatorname{top-}k_{\,j \ne i}\ \cos(f_i, f_j),
    \qquad
    \mathcal{S}(i) = \{\, j \in \mathcal{N}_k(i) : \cos(f_i, f_j) \ge t \,\},

and treats a view of :math:`i` and a view of each partner :math:`j \in
\mathcal{S}(i)` as a positive pair, on top of the two views of :math:`i`.
The relation is used symmetrically in a batch: :math:`i` and :math:`j` are
partners when either mined the other.

Three refinements of ours, because a ReLU network's features are
non-negative: their cosine similarities crowd together (0.95–0.97 for
every mined pair of a trained CIFAR ResNet, 0.75 for any two images), so
no threshold on them separates good pairs from bad ones.

- **The mining space** (``space``): ``centred`` subtracts the features'
  mean before the cosine, ``whitened`` also decorrelates them and equalises
  their variances (PCA whitening); the threshold then applies there.
- **Mutual neighbours** (``mutual``): keep :math:`j \in \mathcal{N}_k(i)`
  only if also :math:`i \in \mathcal{N}_k(j)`.
- **A similarity quantile** (``quantile`` = q): keep only the pairs whose
  similarity reaches the q-quantile of all N·k mined similarities, a
  threshold that adapts to the features' scale.

And a partner's pull is bounded: with ``share`` = s an anchor's positive
weight is split 1 − s to its own image's views and s to its partners'
views (:func:`weigh_positives`), rather than evenly over every positive,
which left an image's own view a third of the weight with one partner.

This module holds the pure parts: mining (:func:`mine_partners`), its
diagnostics, a batch order in which partners meet (:func:`partner_order`),
and the masks that widen an instance method's positives with the partners
found in a batch (:func:`partner_mask`, :func:`same_image_or_partners`,
:func:`own_key_or_partners`). ``positives/sampler.py`` runs them on a
schedule inside a method.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

from clusterclr.positives.views import own_key, same_image

NO_PARTNER = -1
MiningSpace = Literal["raw", "centred", "whitened"]


class MinedPairs(NamedTuple):
    """``partners`` N × k int64 training-set rows, most similar first, padded with -1;
    ``similarities`` N × k float32 cosine similarities, NaN where there is no partner."""

    partners: torch.Tensor
    similarities: torch.Tensor


def mining_space(features: torch.Tensor, space: MiningSpace) -> torch.Tensor:
    """``features`` (N × D) as they are, centred on their mean, or PCA-whitened (float32).

    Whitening (in float64) divides each principal direction by its standard
    deviation; directions with a variance under 1e-6 of the largest are
    dropped, so rank-deficient features (N < D, dead units) stay finite.
    """
    x = features.detach().float()
    if space == "raw":
        return x
    if space not in ("centred", "whitened"):
        raise ValueError(f"unknown mining space {space!r}")
    centred = x - x.mean(0, keepdim=True)
    if space == "centred":
        return centred
    centred = centred.double()
    variances, directions = torch.linalg.eigh(centred.T @ centred / len(centred))
    kept = variances > variances.max() * 1e-6
    return (centred @ (directions[:, kept] / variances[kept].sqrt())).float()


def mine_partners(
    features: torch.Tensor,
    neighbours: int,
    threshold: float | None = None,
    *,
    space: MiningSpace = "raw",
    mutual: bool = False,
    quantile: float | None = None,
) -> MinedPairs:
    """Each row's ``neighbours`` most cosine-similar other rows of ``features`` (N × D), filtered.

    Similarities are cosines in ``space`` (:func:`mining_space`). The
    filters, each optional: ``mutual`` keeps a neighbour only if the row is
    among its ``neighbours`` too; ``quantile`` keeps it only if its
    similarity reaches that quantile of all the N × ``neighbours`` top
    similarities; ``threshold`` only if it reaches ``threshold``. Kept
    partners stay in rank order at the front of their row.

    Exact search: blocks of rows against all rows, on the features' device.
    On the CPU this is as fast as faiss's exact (flat) index; on a GPU it
    mines ImageNet's 1.28M images in minutes, where the CPU would take hours.
    An image is never its own partner: self is dropped by index, not by
    rank, since exact duplicates tie with it and may be returned first.
    """
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"mining needs an N × D feature matrix with N >= 2, got shape {tuple(features.shape)}")
    if neighbours < 1:
        raise ValueError(f"neighbours must be at least 1, got {neighbours}")
    if quantile is not None and not 0 <= quantile < 1:
        raise ValueError(f"quantile must lie in [0, 1), got {quantile}")
    n = len(features)
    x = F.normalize(mining_space(features, space), dim=1)
    searched = min(neighbours + 1, n)  # one extra, for the image itself
    # Blocks of at most 2^26 similarities (256 MiB), whatever N is.
    block = max(1, 2**26 // n)
    scores, ids = [], []
    for start in range(0, n, block):
        top = (x[start : start + block] @ x.T).topk(searched, dim=1)
        scores.append(top.values.cpu())
        ids.append(top.indices.cpu())
    scores, ids = torch.cat(scores), torch.cat(ids)
    keep = ids != torch.arange(n)[:, None]
    # Move the kept results to the front of each row, in rank order, and cut to k.
    columns = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :neighbours]
    ids, scores, keep = ids.gather(1, columns), scores.gather(1, columns), keep.gather(1, columns)
    found = keep.clone()  # each row's neighbours, before the filters
    if quantile is not None:
        keep &= scores >= _quantile(scores[found], quantile)
    if mutual:
        keep &= _mutual(ids, found)
    if threshold is not None:
        keep &= scores >= threshold
    columns = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    ids, scores, keep = ids.gather(1, columns), scores.gather(1, columns), keep.gather(1, columns)
    partners = torch.where(keep, ids, torch.full_like(ids, NO_PARTNER))
    similarities = torch.where(keep, scores, torch.full_like(scores, float("nan")))
    if partners.shape[1] < neighbours:  # fewer other images than neighbours asked for
        pad = neighbours - partners.shape[1]
        partners = F.pad(partners, (0, pad), value=NO_PARTNER)
        similarities = F.pad(similarities, (0, pad), value=float("nan"))
    return MinedPairs(partners, similarities)


def _quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """The lower q-quantile of ``values`` (torch.quantile refuses more than 2^24 of them)."""
    if not len(values):
        return torch.tensor(float("inf"))
    ordered = values.float().sort().values
    return ordered[int(q * (len(ordered) - 1))]


def _mutual(ids: torch.Tensor, found: torch.Tensor) -> torch.Tensor:
    """N × k: whether neighbour ``ids[i, s]`` has image i among its own neighbours (``found`` marks real ones)."""
    lists = torch.where(found, ids, torch.full_like(ids, NO_PARTNER))
    return (lists[ids] == torch.arange(len(ids))[:, None, None]).any(dim=2) & found


def pair_diagnostics(pairs: MinedPairs, labels: torch.Tensor | None = None) -> dict[str, float | int | None]:
    """What a user checks a threshold by.

    ``pairs``: mined (image, partner) entries (a mutual pair counts twice);
    ``images_with_partner``: images with at least one; ``pair_similarity``:
    their mean cosine similarity; ``pair_precision``: the fraction whose two
    images share a label (None without labels or pairs). Labels are read
    here and nowhere near a loss.
    """
    found = pairs.partners >= 0
    count = int(found.sum())
    precision = None
    if labels is not None and count:
        anchors = torch.arange(len(found))[:, None].expand_as(found)[found]
        labels = labels.cpu()
        precision = float((labels[anchors] == labels[pairs.partners[found]]).double().mean())
    return {
        "pairs": count,
        "images_with_partner": int(found.any(1).sum()),
        "pair_similarity": float(pairs.similarities[found].double().mean()) if count else None,
        "pair_precision": precision,
    }


def partner_order(partners: torch.Tensor) -> torch.Tensor:
    """An epoch's order in which each image is followed by one of its partners where it can be.

    Walks a random permutation; each image not yet placed is placed, then
    one of its partners not yet placed (chosen at random), if any. Every
    image appears exactly once, so the number of steps does not change, and
    a pair lands in one batch unless it straddles a batch boundary. The
    randomness comes from the global RNG, which the training loop seeds per
    epoch. Without partners this is ``torch.randperm``.
    """
    partners = partners.cpu()
    n, k = partners.shape
    walk = torch.randperm(n)
    if not (partners >= 0).any():
        return walk
    if k > 1:
        partners = partners.gather(1, torch.rand(n, k).argsort(dim=1))
    rows = partners.tolist()
    placed = bytearray(n)
    order: list[int] = []
    # A plain Python walk over lists: ~1 s per million images, once per epoch.
    for image in walk.tolist():
        if placed[image]:
            continue
        placed[image] = 1
        order.append(image)
        for partner in rows[image]:
            if partner >= 0 and not placed[partner]:
                placed[partner] = 1
                order.append(partner)
                break
    return torch.tensor(order, dtype=torch.long)


def partner_mask(indices: torch.Tensor, partners: torch.Tensor, others: torch.Tensor | None = None) -> torch.Tensor:
    """A × G: whether images ``indices`` (training-set rows) and ``others`` (default: the same) are partners, either way round.

    Never true for an image and itself; symmetric when ``others`` is
    ``indices``. A rank of a distributed run passes its own images and
    every rank's.
    """
    others = indices if others is None else others
    mined_by_a = (partners[indices][:, :, None] == others[None, None, :]).any(dim=1)
    mined_by_b = (partners[others][:, :, None] == indices[None, None, :]).any(dim=1).T
    return (mined_by_a | mined_by_b) & (indices[:, None] != others[None, :])


def weigh_positives(instance: torch.Tensor, partners: torch.Tensor, share: float | None) -> torch.Tensor:
    """An anchor's positives: its own image's (``instance``) and its partners' (``partners``), disjoint A × C masks.

    ``share`` None: the boolean union, every positive weighing the same
    (the paper's multi-positive loss). Else float weights, each row summing
    to one: 1 − ``share`` spread evenly over the instance positives and
    ``share`` over the partner positives, or all of it on the instance
    positives of a row without partners in the batch.
    """
    if share is None:
        return instance | partners
    own, other = instance.float(), partners.float()
    count = other.sum(1, keepdim=True)
    own_share = torch.where(count > 0, 1.0 - share, 1.0)
    return own * own_share / own.sum(1, keepdim=True).clamp_min(1) + other * share / count.clamp_min(1)


def same_image_or_partners(partners_in_batch: torch.Tensor, num_views: int, share: float | None = None) -> torch.Tensor:
    """SimCLR's positives widened: two views are positive if of one image or of two partners.

    ``partners_in_batch`` is :func:`partner_mask`'s B × B mask; views are
    stacked view-major as in :func:`~clusterclr.positives.views.same_image`,
    and every view of a partner counts, whatever its view number.
    ``share``: the partners' part of each view's positive weight
    (:func:`weigh_positives`).
    """
    within_batch = partners_in_batch.repeat(num_views, num_views)
    own = same_image(len(partners_in_batch), num_views, device=partners_in_batch.device)
    return weigh_positives(own, within_batch, share)


def own_key_or_partners(
    partners_in_batch: torch.Tensor, num_candidates: int, first: int = 0, share: float | None = None
) -> torch.Tensor:
    """MoCo's positives widened: query i against [the batch's keys; the queue] has its own key and its partners' keys.

    ``partners_in_batch`` is A × G (queries × the batch's keys); the query's
    own key is key ``first`` + i, as in :func:`~clusterclr.positives.views.own_key`.
    ``share``: the partners' part of each query's positive weight (:func:`weigh_positives`).
    """
    queries, keys = partners_in_batch.shape
    within_batch = F.pad(partners_in_batch, (0, num_candidates - keys), value=False)
    own = own_key(queries, num_candidates, device=partners_in_batch.device, first=first)
    return weigh_positives(own, within_batch, share)
