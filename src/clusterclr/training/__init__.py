"""Training: the loop (``loop.py``), checkpoints and exact resume (``checkpoint.py``), what stops or
warns a run (``guards.py``), and a run from start to finish (``run.py``)."""
