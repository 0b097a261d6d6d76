"""A trained model's clusters of a set of images: k-means fitted on one set, every image of another assigned."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clusterclr.build import Model
from clusterclr.clustering.assignments import ClusterAssignments, assign_to_clusters, save_centroids
from clusterclr.data.base import ImageDataset
from clusterclr.evaluate.features import Embeddings, embed_dataset
from clusterclr.evaluate.protocol import cluster_features


@dataclass(frozen=True)
class ClusteredImages:
    embeddings: Embeddings  # of the assigned images
    assignments: ClusterAssignments


def embed(model: Model, dataset: ImageDataset) -> Embeddings:
    """Backbone features (and head probabilities) of ``dataset``, as evaluation computes them."""
    cfg = model.config
    return embed_dataset(
        model.method, model.views, dataset, model.device, cfg.eval.batch_size, model.autocast_dtype, cfg.train.channels_last
    )


def cluster_images(model: Model, fit_on: ImageDataset, shown: ImageDataset, clusters: int, run_dir: Path) -> ClusteredImages:
    """Fit k-means (as the evaluation does) on ``fit_on``, save its centroids in ``run_dir``, assign ``shown``.

    ``shown`` is assigned by the cluster head where the method has one, else
    by the nearest centroid; pass the same data set twice to cluster it alone.
    """
    fitted_embeddings = embed(model, fit_on)
    centroids = cluster_features(fitted_embeddings.features, clusters, model.config.eval, model.config.seed).centroids
    save_centroids(run_dir, centroids)
    embeddings = fitted_embeddings if shown is fit_on else embed(model, shown)
    return ClusteredImages(embeddings, assign_to_clusters(embeddings.features, embeddings.cluster_probabilities, centroids))
