"""Cluster mates: positives and negatives drawn from a pseudo-labelled memory bank (InterCLR).

Instance discrimination's positive is another view of the same image. Here
the positive is another *image*, one the online clustering put in the same
cluster, and the negatives are images of other clusters that look most
like the query ("semi-hard"). Both samplers work on indices into the bank
and run on its device without waiting on the host.

Positive: drawn uniformly from the anchor image's cluster, never the anchor
image itself (its own views are the intra-image branch's business), unless
it is alone in its cluster: then there is no one else, and the anchor's own
bank entry (its key from an earlier step) is returned.

Negatives (Xie et al., 2022, semi-hard sampling): take the ``pool`` bank
entries most similar to the query, and draw ``count`` of them uniformly
without replacement among those whose pseudo-label differs from the
anchor's. This is InterCLR's "draw from the pool, redraw any that shares
the query's label", done in one pass. When fewer than ``count`` entries of
the pool carry another label, all of them are returned and the remaining
slots are marked invalid, for the loss to leave out; nothing from the
query's own cluster is ever passed off as a negative. A ``pool`` larger
than the bank is the whole bank, and ``count`` at most the pool.

Cost. The pool needs the query's similarity to every bank entry: B × N per
step (256 × 1.28M = 328M entries, 1.3 GB in float32, 84 GFLOP at ImageNet
scale: milliseconds on a GPU, computed in the bank's dtype). The positive
sampler sorts the N labels once per call.
"""

from __future__ import annotations

import torch


def cluster_mates(
    labels: torch.Tensor, anchors: torch.Tensor, num_clusters: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """For each anchor (a row of the bank), a uniformly drawn other row with the same label (B, int64).

    ``labels`` (N) are the bank's pseudo-labels in [0, ``num_clusters``).
    """
    order = torch.argsort(labels, stable=True)  # rows grouped by cluster
    slot_of_row = torch.empty_like(order)
    slot_of_row[order] = torch.arange(len(order), device=order.device)
    sizes = torch.bincount(labels, minlength=num_clusters)
    first_slot = torch.cumsum(sizes, 0) - sizes
    cluster = labels[anchors]
    others = sizes[cluster] - 1
    uniform = torch.rand(len(anchors), device=labels.device, generator=generator)
    # min() guards against float rounding up to ``others`` itself.
    draw = torch.minimum((uniform * others).long(), (others - 1).clamp_min(0))
    slot = first_slot[cluster] + draw
    own_slot = slot_of_row[anchors]
    slot = slot + (slot >= own_slot).long()  # step over the anchor's own slot
    return order[torch.where(others > 0, slot, own_slot)]


def semi_hard_negatives(
    similarities: torch.Tensor,
    labels: torch.Tensor,
    anchor_labels: torch.Tensor,
    pool: int,
    count: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Negatives for B queries: ``count`` bank rows each, and which of them are valid (both B × count).

    ``similarities`` (B × N) are the queries' similarities to the bank,
    ``labels`` (N) its pseudo-labels, ``anchor_labels`` (B) the queries'.
    """
    pool = min(pool, similarities.shape[1])
    count = min(count, pool)
    pool_rows = similarities.topk(pool, dim=1, sorted=False).indices
    other_cluster = labels[pool_rows] != anchor_labels[:, None]
    # Random keys pick a uniform subset; same-cluster rows get a key below every other row's.
    keys = torch.rand(pool_rows.shape, device=similarities.device, generator=generator)
    keys = keys.masked_fill(~other_cluster, -1.0)
    chosen_keys, chosen = keys.topk(count, dim=1, sorted=False)
    return pool_rows.gather(1, chosen), chosen_keys >= 0
