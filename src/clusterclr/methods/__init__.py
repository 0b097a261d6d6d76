"""Training methods; importing this package registers the built-in ones."""

from clusterclr.methods import byol, moco_v2, simclr, simsiam  # noqa: F401
from clusterclr.methods import cc, center_predictor  # noqa: F401
from clusterclr.methods import sepp  # noqa: F401
from clusterclr.methods import interclr, pcl  # noqa: F401
