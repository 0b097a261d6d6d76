"""scikit-learn's bundled digits: 1,797 grayscale 8×8 images with values 0..16.

Shipped inside scikit-learn, so no root is needed. Pixels are scaled to
0..255 (round(v * 255 / 16)). There is no official test split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from clusterclr.data.base import ImageDataset, RawSplits


def load(root: Path | None = None, image_size: int | None = None) -> RawSplits:
    """Return the digits as N×1×8×8 uint8; root and image_size are ignored."""
    # scikit-learn is slow to import; only data sets that need it pay for it.
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images * (255 / 16)).astype(np.uint8)
    return RawSplits(
        train=ImageDataset(
            images=torch.from_numpy(pixels[:, None]),
            labels=torch.from_numpy(digits.target.astype(np.int64)),
            class_names=tuple(str(d) for d in range(10)),
        )
    )
