"""Training methods; importing this package registers the built-in ones."""

from clusterclr.methods import simclr  # noqa: F401
