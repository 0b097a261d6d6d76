"""Batch norm over sub-batches: shuffle-BN on a single device.

With batch norm, a query and its positive key computed in the same batch
share batch statistics, and the network can match them through those
statistics instead of through content (He et al., 2020, Sec. 3.3). MoCo
breaks this on many GPUs by shuffling the keys' batch across devices. On
one device we do the same with sub-batches: queries are normalised in
groups of the batch in its order, keys in groups of a shuffled order, so a
query and its key never share statistics (for groups ≥ 2). Costs no extra
compute, only smaller batch-norm batches.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def forward_in_groups(
    network: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, groups: int, shuffle: bool
) -> torch.Tensor:
    """``network(x)`` with batch statistics taken over ``groups`` sub-batches.

    With ``shuffle`` the sub-batches are drawn from a random permutation of
    the batch; the output is returned in the input's order either way.
    """
    if groups <= 1:
        return network(x)
    if len(x) < 2 * groups:
        raise ValueError(f"a batch of {len(x)} cannot be split into {groups} batch-norm groups of at least 2")
    order = torch.randperm(len(x), device=x.device) if shuffle else None
    chunks = (x[order] if shuffle else x).chunk(groups)
    out = torch.cat([network(chunk) for chunk in chunks])
    if not shuffle:
        return out
    restored = torch.empty_like(out)
    restored[order] = out
    return restored
