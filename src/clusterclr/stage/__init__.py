"""A clustering stage on frozen features: cluster heads (SCAN, TEMI) on mined neighbours, K chosen from the data, near-duplicates and atypical images.

``graph``: the neighbour graph everything shares. ``trainer``: the heads'
training (``ClusterStage``), with ``scan_objective``, ``temi_objective``
and ``self_label``. ``choose_k``: the number of clusters. ``duplicates``:
near-duplicate groups and atypicality.
"""
