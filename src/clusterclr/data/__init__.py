"""Data sets: one module per on-disk format, found by name in ``registry``."""
