"""clusterclr: self-supervised image representations and clusters."""

__version__ = "0.1.0"
