"""Random resized crops made where images are decoded: in DataLoader workers, from the full-resolution image.

A streamed data set cannot crop on the device as the in-memory path does
(it would have to ship full-resolution images there), so the crop is made
while decoding, as torchvision's ``RandomResizedCrop`` and the papers do:
a box covering a uniform fraction of the image's area (``crop_scale``) with
a log-uniform aspect ratio (``crop_ratio``), ten tries, else the central
box of the nearest allowed ratio; it is resized to S×S (bilinear, Pillow's
antialiasing when shrinking).

Every draw is a pure function of (seed, epoch, image, view)
(``crop_generator``): no worker holds random state, so which worker makes a
crop, how many there are and where a resumed run starts change nothing.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

ATTEMPTS = 10


def crop_generator(seed: int, epoch: int, image: int, view: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, image, view])


def crop_box(
    width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a random crop of a width × height image (torchvision's sampling)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(ATTEMPTS):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    shape = width / height
    if shape < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif shape > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def random_resized_crop(
    image: Image.Image, size: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> np.ndarray:
    """3×size×size uint8: a random box of ``image`` (RGB) resized to size × size."""
    box = crop_box(image.width, image.height, scale, ratio, rng)
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR, box=box)).transpose(2, 0, 1)
