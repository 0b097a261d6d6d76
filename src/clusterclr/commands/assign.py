"""``clusterclr assign``: put new images into a trained run's clusters.

By the cluster head where the method has one, else by the nearest of the
k-means centroids the run saved (``centroids.npy``, written by ``cluster``
and by every report). Images are read as the folder data set reads them and
resized to the run's training resolution. A file that cannot be used is an
error naming it, or, with ``skip_bad`` (``--skip-bad``, or a run trained
with ``data.skip_bad=true``), left out and listed with why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clusterclr.build import Model
from clusterclr.clustering.assignments import (
    ClusterAssignments,
    assign_to_clusters,
    load_centroids,
)
from clusterclr.data.base import BadFile, ImageDataset, refuse_bad_files
from clusterclr.data.folder import EXTENSIONS, image_files, read_files
from clusterclr.errors import UserError
from clusterclr.evaluate.features import Embeddings, embed
from clusterclr.pathtext import path_text
from clusterclr.rundir import RunDir

SKIP_FLAG = "--skip-bad"


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
                raise UserError(f"no image files ({' '.join(sorted(EXTENSIONS))}) in {path_text(path)} or its subfolders")
            found.update(dict.fromkeys(files))
        elif path.is_file():
            found[path] = None
        else:
            raise UserError(f"image or folder not found: {path_text(item)}")
    return list(found)


@dataclass(frozen=True)
class FileEmbeddings:
    """Image files embedded under a run: those used, in the order given, and those left out."""

    paths: list[Path]
    embeddings: Embeddings  # rows in ``paths`` order
    skipped: tuple[BadFile, ...] = ()


def embed_files(model: Model, paths: list[Path], skip_bad: bool = False) -> FileEmbeddings:
    """Features (and head probabilities) of image files, read as the folder data set reads them at the run's
    resolution; an unusable file is an error naming it unless ``skip_bad``."""
    height, width = model.method.data.image_size
    if height != width:
        raise UserError(f"the run was trained on {height}×{width} images; image files are read square only")
    if model.method.data.channels != 3:
        raise UserError(f"the run was trained on {model.method.data.channels}-channel images; image files are read as RGB")
    read = read_files(paths, height, "given", progress=True)
    if not skip_bad:
        refuse_bad_files(read.bad, SKIP_FLAG)
    embeddings = embed(model, ImageDataset(read.images))
    return FileEmbeddings([paths[i] for i in read.kept], embeddings, read.bad)


def assign_images(
    model: Model, run_dir: RunDir, paths: list[Path], skip_bad: bool = False
) -> tuple[FileEmbeddings, ClusterAssignments]:
    """The clusters of image files under a run: by its cluster head, else by its saved k-means centroids."""
    embedded = embed_files(model, paths, skip_bad)
    features, probabilities = embedded.embeddings.features, embedded.embeddings.cluster_probabilities
    centroids = load_centroids(run_dir.centroids, features.shape[1]) if probabilities is None else None
    return embedded, assign_to_clusters(features, probabilities, centroids)
