"""Seeded, class-stratified subsets of a labelled split: the labelled few for semi-supervised
fine-tuning, and the validation part that picks a linear probe's weight decay."""

from __future__ import annotations

import torch

from clusterclr.errors import UserError


def balanced_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Sorted row indices of an equal number of images per class, about ``fraction`` of all rows.

    Each class gives ``max(1, round(fraction * N / C))`` rows drawn without
    replacement from a generator seeded with ``seed``, so one seed always
    gives the same subset.
    """
    if not 0 < fraction <= 1:
        raise UserError(f"a labelled fraction must lie in (0, 1], got {fraction}")
    classes = torch.unique(labels)
    per_class = max(1, round(fraction * len(labels) / len(classes)))
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in classes:
        rows = torch.nonzero(labels == c).flatten()
        if len(rows) < per_class:
            raise UserError(
                f"{fraction:g} of the labels, balanced, needs {per_class} images of each class but class {int(c)} "
                f"has {len(rows)}; use a smaller fraction"
            )
        chosen.append(rows[torch.randperm(len(rows), generator=generator)[:per_class]])
    return torch.cat(chosen).sort().values


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held out) sorted row indices, holding out about ``fraction`` of each class (at least one
    row of every class with two or more, so each class is seen on both sides)."""
    generator = torch.Generator().manual_seed(seed)
    kept, held = [], []
    for c in torch.unique(labels):
        rows = torch.nonzero(labels == c).flatten()
        rows = rows[torch.randperm(len(rows), generator=generator)]
        n_held = min(len(rows) - 1, max(1, round(fraction * len(rows))))
        held.append(rows[:n_held])
        kept.append(rows[n_held:])
    return torch.cat(kept).sort().values, torch.cat(held).sort().values
