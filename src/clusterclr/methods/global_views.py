"""The views of the global batch a rank contrasts its own views with (see ``distributed.py``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clusterclr import distributed
from clusterclr.losses.contrastive import nt_xent
from clusterclr.positives.views import same_image


@dataclass
class GlobalViews:
    embeddings: torch.Tensor  # V·G × D, view-major over the G images of every rank (or of this one alone)
    indices: torch.Tensor  # the G images' training-set rows
    anchors: torch.Tensor  # the rows of ``embeddings`` that are this rank's views
    num_views: int

    @classmethod
    def of(cls, z: torch.Tensor, indices: torch.Tensor, num_views: int, across_ranks: bool) -> GlobalViews:
        """``z``: this rank's V·n view-major embeddings; ``across_ranks``: take every rank's views as candidates."""
        if not across_ranks or distributed.world_size() == 1:
            return cls(z, indices, torch.arange(len(z), device=z.device), num_views)
        return cls(
            distributed.gather_views(z, num_views),
            distributed.gather(indices),
            distributed.local_view_rows(len(indices), num_views, z.device),
            num_views,
        )

    def nt_xent(self, temperature: float, positives: torch.Tensor | None = None) -> torch.Tensor:
        """NT-Xent of this rank's views against all; ``positives`` (V·G × V·G) default to the same image's views."""
        if positives is None:
            positives = same_image(len(self.indices), self.num_views, device=self.embeddings.device)
        return nt_xent(self.embeddings, positives[self.anchors], temperature, self.anchors)
