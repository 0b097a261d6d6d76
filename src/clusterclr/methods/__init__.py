"""Training methods; importing this package registers the built-in ones."""

from clusterclr.methods import (  # noqa: F401
    byol,
    cc,
    center_predictor,
    interclr,
    moco_v2,
    pcl,
    scan,
    sepp,
    simclr,
    simsiam,
)
