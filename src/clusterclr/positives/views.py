"""Instance discrimination: only views of the same image are positives."""

from __future__ import annotations

from typing import NamedTuple

import torch


class Positives(NamedTuple):
    """The answer of a method's positives hook: a mask over (anchors × candidates), and what to log about it."""

    mask: torch.Tensor
    logs: dict[str, torch.Tensor] = {}


def same_image(num_images: int, num_views: int, device: torch.device | None = None) -> torch.Tensor:
    """Positive mask for ``num_views`` stacked views of ``num_images`` images.

    Views are stacked view-major: row ``v * num_images + i`` is view ``v`` of
    image ``i``. Entry (a, b) is True when a and b are different views of one
    image; the diagonal (a view with itself) is never a positive.
    """
    image_of_row = torch.arange(num_images, device=device).repeat(num_views)
    mask = image_of_row[:, None] == image_of_row[None, :]
    mask.fill_diagonal_(False)
    return mask


def own_key(num_queries: int, num_candidates: int, device: torch.device | None = None, first: int = 0) -> torch.Tensor:
    """MoCo's positive mask: query i against [the batch's keys; the queue] has only key ``first`` + i.

    ``first`` is where this rank's keys start among every rank's in a distributed run.
    """
    mask = torch.zeros(num_queries, num_candidates, dtype=torch.bool, device=device)
    rows = torch.arange(num_queries, device=device)
    mask[rows, rows + first] = True
    return mask
