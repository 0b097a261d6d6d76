"""A trained model's clusters of a set of images, as its report, ``cluster`` and ``assign`` show them."""

from __future__ import annotations

import numpy as np

from clusterclr.clustering.assignments import ClusterAssignments, assign_to_clusters
from clusterclr.evaluate.context import EvalContext


def cluster_assignments(ctx: EvalContext) -> tuple[np.ndarray, ClusterAssignments]:
    """The clusters of ``ctx.test``, and the k-means centroids fitted on ``ctx.bank`` (to save for ``assign``).

    By the cluster head where the method has one, else by the nearest of
    those centroids: the same fit as the standard evaluation's (K and seed
    of the run). Give one data set as bank and test to cluster it alone.
    """
    centroids = ctx.kmeans(ctx.clusters, ctx.model.config.seed).centroids
    shown = ctx.embeddings("test")
    return centroids, assign_to_clusters(shown.features, shown.cluster_probabilities, centroids)
