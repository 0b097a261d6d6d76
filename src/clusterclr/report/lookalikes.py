"""What people use dedup tools for: near-duplicate groups and the most atypical images of a report's images.

Both are read off the neighbour graph of the images' features
(``clusterclr.stage.duplicates``): a group is images joined by pairs above
the duplicate threshold, and an image is atypical when even its nearest
images are far. The report shows the first groups and the most atypical
images as galleries; every group and every image's rank go to CSV files in
the run directory.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from clusterclr.io import write_text
from clusterclr.rundir import RunDir
from clusterclr.stage.duplicates import (
    DuplicateGroup,
    atypical_rows,
    duplicate_rows,
    most_atypical,
    near_duplicates,
)
from clusterclr.stage.graph import neighbour_graph

NEIGHBOURS = 10
GROUPS_SHOWN = 10
GROUP_IMAGES_SHOWN = 8
ATYPICAL_SHOWN = 12


@dataclass(frozen=True)
class Lookalikes:
    duplicates: list[DuplicateGroup]  # largest and closest first
    atypical: list[tuple[int, float]]  # (image row, atypicality), most atypical first, every image


def find_lookalikes(features: torch.Tensor) -> Lookalikes | None:
    """Near-duplicate groups and atypicality of N images' features; None for fewer than 3 images."""
    if len(features) < 3:
        return None
    graph = neighbour_graph(features, min(NEIGHBOURS, len(features) - 1))
    return Lookalikes(near_duplicates(graph), most_atypical(graph))


def write_lookalike_csvs(run_dir: RunDir, found: Lookalikes, sources: Sequence[str] | None) -> None:
    """``near_duplicates.csv`` (group, size, image, source, similarity) and ``atypical.csv`` (rank, image, source, atypicality)."""
    write_text(run_dir.near_duplicates_csv, _csv(duplicate_rows(found.duplicates, sources), ("group", "size", "image", "source", "similarity")))
    write_text(run_dir.atypical_csv, _csv(atypical_rows(found.atypical, sources), ("rank", "image", "source", "atypicality")))


def _csv(rows: list[dict[str, object]], columns: tuple[str, ...]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
