"""``clusterclr assign``: put new images into a trained run's clusters.

By the cluster head where the method has one, else by the nearest of the
k-means centroids the run saved (``centroids.npy``, written by ``cluster``
and by every report). Images are read as the folder data set reads them and
resized to the run's training resolution.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from clusterclr.build import Model
from clusterclr.clustering.assignments import (
    ClusterAssignments,
    assign_to_clusters,
    load_centroids,
)
from clusterclr.data.base import ImageDataset
from clusterclr.data.folder import EXTENSIONS, image_files, try_read
from clusterclr.errors import UserError
from clusterclr.evaluate.features import Embeddings, embed
from clusterclr.progress import progress_bar
from clusterclr.rundir import RunDir


def collect_images(items: list[str]) -> list[Path]:
    """Absolute paths of the named image files and of the image files anywhere under the named folders.

    Order: as given, each folder's files sorted; a file named twice counts once.
    """
    if not items:
        raise UserError("name at least one image file or folder")
    found: dict[Path, None] = {}
    for item in items:
        path = Path(item).expanduser().absolute()
        if path.is_dir():
            files = image_files(path, recursive=True)
            if not files:
                raise UserError(f"no image files ({' '.join(sorted(EXTENSIONS))}) in {path} or its subfolders")
            found.update(dict.fromkeys(files))
        elif path.is_file():
            found[path] = None
        else:
            raise UserError(f"image or folder not found: {item}")
    return list(found)


def read_images(paths: list[Path], size: int) -> torch.Tensor:
    """uint8 N×3×size×size pixels of ``paths``; an unusable file is an error naming it."""
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        pixels = list(progress_bar(pool.map(lambda p: try_read(p, size), paths), total=len(paths), desc="reading", unit="image"))
    for path, result in zip(paths, pixels):
        if isinstance(result, str):
            raise UserError(f"cannot use {path}: {result}")
    return torch.from_numpy(np.stack(pixels))


def embed_files(model: Model, paths: list[Path]) -> Embeddings:
    """Features (and head probabilities) of image files, read as the folder data set reads them at the run's resolution."""
    height, width = model.method.data.image_size
    if height != width:
        raise UserError(f"the run was trained on {height}×{width} images; image files are read square only")
    if model.method.data.channels != 3:
        raise UserError(f"the run was trained on {model.method.data.channels}-channel images; image files are read as RGB")
    return embed(model, ImageDataset(read_images(paths, height)))


def assign_images(model: Model, run_dir: RunDir, paths: list[Path]) -> tuple[Embeddings, ClusterAssignments]:
    """The clusters of image files under a run: by its cluster head, else by its saved k-means centroids."""
    embeddings = embed_files(model, paths)
    probabilities = embeddings.cluster_probabilities
    centroids = load_centroids(run_dir.centroids, embeddings.features.shape[1]) if probabilities is None else None
    return embeddings, assign_to_clusters(embeddings.features, probabilities, centroids)
