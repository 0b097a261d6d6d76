"""Example images per cluster, most confident first, as PNGs."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from clusterclr.clustering.assignments import ClusterAssignments

PER_CLUSTER = 12
THUMBNAIL = 64  # px: small images are enlarged (nearest neighbour) to at least this side


def most_confident(assignments: ClusterAssignments, per_cluster: int = PER_CLUSTER) -> list[np.ndarray]:
    """For each cluster, the rows of its ``per_cluster`` most confident images, most confident first.

    Ties keep row order, so the choice is deterministic.
    """
    order = np.lexsort((np.arange(len(assignments.cluster)), -assignments.confidence))
    ranked = order[np.argsort(assignments.cluster[order], kind="stable")]
    starts = np.searchsorted(assignments.cluster[ranked], np.arange(assignments.clusters))
    ends = np.append(starts[1:], len(ranked))
    return [ranked[s : min(e, s + per_cluster)] for s, e in zip(starts, ends)]


def _pil(image: torch.Tensor) -> Image.Image:
    """One uint8 C×H×W image, enlarged to at least THUMBNAIL px on its shorter side."""
    array = image.numpy()
    picture = Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0))
    scale = max(1, -(-THUMBNAIL // min(picture.size)))
    return picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)


def thumbnail_png(image: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    _pil(image).save(buffer, format="PNG")
    return buffer.getvalue()


def gallery_grid(images: torch.Tensor, rows: list[np.ndarray], gap: int = 2) -> bytes:
    """One PNG: a row of thumbnails per cluster (blank where a cluster has fewer images)."""
    height, width = _pil(images[0]).size[::-1]
    columns = max([len(r) for r in rows] + [1])
    sheet = Image.new("RGB", (columns * (width + gap) + gap, len(rows) * (height + gap) + gap), "white")
    for r, members in enumerate(rows):
        for c, row in enumerate(members):
            sheet.paste(_pil(images[int(row)]).convert("RGB"), (gap + c * (width + gap), gap + r * (height + gap)))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()
