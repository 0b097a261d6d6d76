"""clusterclr: self-supervised image representations and clusters.

The Python API (``clusterclr.api``), importable from here::

    import clusterclr

    run = clusterclr.train("configs/digits_simclr.yaml", overrides={"train.epochs": 20})
    run = clusterclr.load("runs/simclr-digits-...")
    features = run.embed("photos/").features
    found = clusterclr.cluster("photos/", clusters=8)
    clusterclr.path_from_text(field)   # the exact path a clusters.csv field names (see clusterclr.pathtext)

The parts methods are built from live at stable paths: ``clusterclr.losses``,
``clusterclr.models.heads``, ``clusterclr.positives``, ``clusterclr.methods``.
"""

from __future__ import annotations

from typing import Any

from clusterclr.pathtext import path_from_text, path_text
from clusterclr.version import __version__

# Loaded on first use, so `import clusterclr` (and the command line) stays quick.
_API = ("Clusters", "Run", "cluster", "finish_cluster", "load", "make_config", "resume", "train")

__all__ = [*_API, "__version__", "path_from_text", "path_text"]


def __getattr__(name: str) -> Any:
    if name in _API:
        from clusterclr import api

        return getattr(api, name)
    raise AttributeError(f"module 'clusterclr' has no attribute {name!r}")
