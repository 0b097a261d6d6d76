"""Clustering used for evaluation and, by clustering methods, during training."""
