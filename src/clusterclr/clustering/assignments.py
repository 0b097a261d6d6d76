"""Which cluster each image is in, how sure we are, and the saved centroids that assign new images.

A method with a cluster head assigns by the head: the most probable cluster,
with that probability as the confidence. Any other method assigns by
k-means on L2-normalised features: the nearest centroid, with the cosine
similarity to it as the confidence. The k-means centroids of a run are kept
in the run directory (``RunDir.centroids``) so that images never seen in
training can be assigned later (``clusterclr assign``) without the training data.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from clusterclr.clustering.kmeans import assign
from clusterclr.errors import UserError
from clusterclr.io import atomic_write
from clusterclr.pathtext import path_text


@dataclass(frozen=True)
class ClusterAssignments:
    cluster: np.ndarray  # (N,) int64
    confidence: np.ndarray  # (N,) float32: head probability, or cosine similarity to the centroid
    by: str  # "cluster head" or "k-means"
    clusters: int  # K, empty clusters included

    def sizes(self) -> np.ndarray:
        return np.bincount(self.cluster, minlength=self.clusters)


def assign_to_clusters(
    features: torch.Tensor, probabilities: torch.Tensor | None, centroids: np.ndarray | None
) -> ClusterAssignments:
    """Assignments of (N, D) backbone features: by the head's (N, K) ``probabilities`` if given, else by ``centroids``."""
    if probabilities is not None:
        confidence, cluster = probabilities.float().max(1)
        return ClusterAssignments(cluster.numpy().astype(np.int64), confidence.numpy(), "cluster head", probabilities.shape[1])
    if centroids is None:
        raise ValueError("without cluster probabilities, centroids are needed")
    normalised = F.normalize(features.float(), dim=1).numpy()
    cluster = assign(normalised, centroids)
    unit_centroids = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), np.finfo(np.float32).tiny)
    confidence = np.einsum("nd,nd->n", normalised, unit_centroids[cluster]).astype(np.float32)
    return ClusterAssignments(cluster, confidence, "k-means", len(centroids))


def save_centroids(path: Path, centroids: np.ndarray) -> Path:
    array = np.ascontiguousarray(centroids, dtype=np.float32)
    return atomic_write(path, lambda f: np.save(f, array))


def load_centroids(path: Path, dim: int) -> np.ndarray:
    """The K × ``dim`` centroids saved at ``path`` (a run directory's ``centroids.npy``)."""
    if not path.is_file():
        raise UserError(
            f"{path.parent} has no saved k-means centroids ({path.name}); write them with `clusterclr report {path.parent}`"
        )
    try:
        centroids = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    if centroids.ndim != 2 or centroids.shape[1] != dim or len(centroids) < 1:
        raise UserError(f"{path} holds an array of shape {centroids.shape}, not K centroids of the model's {dim} features")
    return centroids.astype(np.float32)


def assignments_csv(paths: Sequence[str], assignments: ClusterAssignments) -> str:
    """``path,cluster,confidence``, one row per image in the given order.

    Paths are written by ``path_text`` (any file name, one line of UTF-8);
    ``clusterclr.path_from_text`` of a ``path`` field gives the exact path back.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "cluster", "confidence"])
    for path, cluster, confidence in zip(paths, assignments.cluster, assignments.confidence, strict=True):
        writer.writerow([path_text(path), int(cluster), f"{float(confidence):.4f}"])
    return buffer.getvalue()
