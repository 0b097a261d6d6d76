"""Views of a batch, made with kornia on the training device.

Images arrive as uint8 N×C×H×W; a view is a float tensor normalised with the
training set's per-channel mean and std. Every sample in a batch draws its
own crop, flip, jitter, grayscale and blur parameters.

Presets follow image resolution (``preset: auto``):

- ``small`` (≤ 16 px, e.g. digits): gentle crops, brightness/contrast only.
- ``cifar`` (≤ 64 px): the SimCLR/MoCo v2 CIFAR recipe, no blur (it erases
  32 px images).
- ``imagenet`` (> 64 px): the SimCLR/MoCo v2 ImageNet recipe with blur.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import kornia.augmentation as K
import torch
from torch import nn

from clusterclr.config import AugmentConfig
from clusterclr.data.base import BadFile
from clusterclr.data.loading import image_batches
from clusterclr.data.streamed import StreamedImages

# The SimCLR / MoCo v2 CIFAR recipe; the other presets differ from it where noted.
_CIFAR = dict(
    crop_scale=(0.2, 1.0),
    crop_ratio=(3 / 4, 4 / 3),
    flip_prob=0.5,
    jitter_prob=0.8,
    brightness=0.4,
    contrast=0.4,
    saturation=0.4,
    hue=0.1,
    grayscale_prob=0.2,
    blur_prob=0.0,
    blur_sigma=(0.1, 2.0),
    solarize_prob=0.0,
)
PRESETS: dict[str, dict[str, Any]] = {
    "small": {**_CIFAR, "crop_scale": (0.5, 1.0), "saturation": 0.0, "hue": 0.0, "grayscale_prob": 0.0},
    "cifar": _CIFAR,
    "imagenet": {**_CIFAR, "crop_scale": (0.08, 1.0), "blur_prob": 0.5},
}


def recipe_for(augment: AugmentConfig, image_size: int) -> AugmentConfig:
    """``augment`` with every field filled: those it sets, the rest from its preset (``auto`` picks one by resolution)."""
    preset = augment.preset
    if preset == "auto":
        preset = "small" if image_size <= 16 else "cifar" if image_size <= 64 else "imagenet"
    unset = {key: value for key, value in PRESETS[preset].items() if getattr(augment, key) is None}
    return augment.model_copy(update={"preset": preset, **unset})


class ViewMaker(nn.Module):
    """Turns a uint8 batch into augmented views, or into the clean view.

    Every view comes in the memory layout the model was put in (``channels_last``), so no caller converts it.
    """

    def __init__(
        self,
        recipe: AugmentConfig,
        image_size: tuple[int, int],
        channels: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.recipe = recipe
        self.layout = torch.channels_last if channels_last else torch.contiguous_format
        # The crop is kept apart from the rest: a streamed data set crops while decoding (``data/crops.py``)
        # and makes only the rest here (``finish``). Applied one after the other, the parameters drawn are
        # the same as one Sequential's.
        self.crop = BatchedResizedCrop(image_size, scale=recipe.crop_scale, ratio=recipe.crop_ratio)
        ops: list[nn.Module] = []
        if recipe.flip_prob > 0:
            ops.append(K.RandomHorizontalFlip(p=recipe.flip_prob))
        colour = channels == 3
        if recipe.jitter_prob > 0:
            jitter = K.ColorJitter(
                brightness=recipe.brightness,
                contrast=recipe.contrast,
                # Saturation and hue do not exist for one-channel images.
                saturation=recipe.saturation if colour else 0.0,
                hue=recipe.hue if colour else 0.0,
                p=recipe.jitter_prob,
            )
            if hasattr(jitter, "_hue_fn"):
                # kornia's hue step converts to HSV and back: 80% of the augmentation's time on a CPU
                # (a 32 px batch); shift_hue is the same function (tested against it) in a few tensor ops.
                jitter._hue_fn = shift_hue
            ops.append(jitter)
        if colour and recipe.grayscale_prob > 0:
            ops.append(K.RandomGrayscale(p=recipe.grayscale_prob))
        if recipe.blur_prob > 0:
            # SimCLR's kernel: about a tenth of the image side, odd.
            kernel = 2 * max(1, round(0.05 * min(image_size))) + 1
            ops.append(K.RandomGaussianBlur((kernel, kernel), sigma=recipe.blur_sigma, p=recipe.blur_prob))
        if recipe.solarize_prob > 0:
            ops.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=recipe.solarize_prob))
        self.augment = nn.Sequential(*ops)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def _to_unit(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"views are made from uint8 images, got {images.dtype}")
        return images.float().div_(255.0)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std).contiguous(memory_format=self.layout)

    @torch.no_grad()
    def clean(self, images: torch.Tensor) -> torch.Tensor:
        """The non-augmented view: only scaled and normalised."""
        return self._normalise(self._to_unit(images))

    def clean_batches(
        self, images: torch.Tensor | StreamedImages, batch_size: int, device: torch.device
    ) -> Iterator[tuple[torch.Tensor, list[BadFile]]]:
        """Clean views of host-side uint8 ``images`` (in memory, or streamed: see ``data.loading.image_batches``),
        ``batch_size`` at a time, on ``device``, each with the unreadable files replaced in it."""
        chunks = torch.arange(len(images)).split(batch_size)
        for pixels, bad in image_batches(images, chunks, pin=device.type == "cuda"):
            yield self.clean(pixels.to(device, non_blocking=True)), bad

    @torch.no_grad()
    def forward(self, images: torch.Tensor, num_views: int = 2) -> list[torch.Tensor]:
        """``num_views`` independent augmented views of ``images``."""
        x = self._to_unit(images)
        return [self._normalise(self.augment(self.crop(x)).clamp_(0.0, 1.0)) for _ in range(num_views)]

    @torch.no_grad()
    def finish(self, crops: torch.Tensor) -> torch.Tensor:
        """One view of uint8 ``crops`` that are already randomly cropped and resized: every other step of the recipe."""
        return self._normalise(self.augment(self._to_unit(crops)).clamp_(0.0, 1.0))


class BatchedResizedCrop(K.RandomResizedCrop):
    """kornia's RandomResizedCrop (its parameters, its pixels) with every crop resized in one batched gather.

    kornia resizes each image's crop with its own ``interpolate`` call. For
    small images that per-image loop is most of the crop's time: 4.7 ms
    against 1.5 ms for 256 images of 32 px on 2 CPU threads; on a GPU it is
    one small kernel launch per image (not measured here). Large images on a
    CPU keep kornia's loop, whose per-image kernel is the faster one there
    (96 px: 14 ms against 15 to 50 ms).
    """

    def __init__(self, size: tuple[int, int], scale: tuple[float, float], ratio: tuple[float, float]) -> None:
        # resized_crop reproduces exactly this mode: integer box, bilinear, corner-aligned.
        super().__init__(size, scale=scale, ratio=ratio, resample="bilinear", align_corners=True, cropping_mode="slice")

    def apply_transform(self, input, params, flags, transform=None):
        if input.device.type == "cpu" and input.shape[-2] * input.shape[-1] > 64 * 64:
            return super().apply_transform(input, params, flags, transform)
        return resized_crop(input, params["src"], flags["size"])


def resized_crop(images: torch.Tensor, corners: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Each image's box, resized to ``size`` by bilinear interpolation with corners aligned.

    ``corners`` are kornia's N×4×2 (x, y) box corners (top-left, top-right,
    bottom-right, bottom-left), truncated to whole pixels and inclusive, as
    kornia's slice mode reads them. Rows are interpolated first, then columns.
    """
    n, c, _, width = images.shape
    box = corners.to(images.device).long()
    x0, y0 = box[:, 0, 0], box[:, 0, 1]
    top, bottom, down = _interpolation_taps(y0, box[:, 3, 1] + 1 - y0, size[0])
    left, right, across = _interpolation_taps(x0, box[:, 1, 0] + 1 - x0, size[1])

    def rows(index: torch.Tensor) -> torch.Tensor:
        return images.gather(2, index[:, None, :, None].expand(n, c, size[0], width))

    resized_rows = torch.lerp(rows(top), rows(bottom), down[:, None, :, None].to(images.dtype))

    def columns(index: torch.Tensor) -> torch.Tensor:
        return resized_rows.gather(3, index[:, None, None, :].expand(n, c, *size))

    return torch.lerp(columns(left), columns(right), across[:, None, None, :].to(images.dtype))


def _interpolation_taps(start: torch.Tensor, length: torch.Tensor, out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For ``out`` samples spread corner to corner over pixels start..start+length-1 of each image:
    the pixel below and above every sample and the weight of the one above (N×out each)."""
    # PyTorch's corner-aligned source coordinate, computed the same way so the result matches interpolate's.
    position = ((length - 1).float() / max(out - 1, 1))[:, None] * torch.arange(out, device=start.device, dtype=torch.float32)
    below = position.long()
    above = torch.minimum(below + 1, (length - 1)[:, None])
    return start[:, None] + below, start[:, None] + above, position - below


def shift_hue(images: torch.Tensor, radians: torch.Tensor) -> torch.Tensor:
    """RGB ``images`` (N×3×H×W, in [0, 1]) with their HSV hue turned by ``radians`` (N), saturation and value kept.

    The hue in sixths of a turn, h = 0..6, then back to RGB with the
    branch-free form c_n = V − (V − min)·clamp(min(k, 4 − k), 0, 1),
    k = (n + h) mod 6 for n = 5, 3, 1 (R, G, B).
    """
    r, g, b = images.unbind(1)
    high, low = images.amax(1), images.amin(1)
    spread = high - low
    safe = torch.where(spread > 0, spread, torch.ones_like(spread))
    hue = torch.where(high == r, (g - b) / safe, torch.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(spread > 0, hue, torch.zeros_like(hue)) + radians.view(-1, 1, 1) * (3 / math.pi)
    n = torch.tensor([5.0, 3.0, 1.0], device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    k = torch.remainder(n + hue.unsqueeze(1), 6)
    return high.unsqueeze(1) - spread.unsqueeze(1) * torch.minimum(k, 4 - k).clamp(0, 1)


def channel_stats(images: torch.Tensor, chunk: int = 1024) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of a uint8 image tensor, in [0, 1] units.

    Counted chunk by chunk, so memory stays at one chunk however large the
    data set.
    """
    return chunked_channel_stats(images[start : start + chunk] for start in range(0, len(images), chunk))


def chunked_channel_stats(chunks: Iterable[torch.Tensor]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``channel_stats`` of the images in ``chunks`` (uint8 N×C×H×W each).

    From a histogram of each channel's 256 values, so the sums are exact and
    the result does not depend on how the images are chunked: a streamed data
    set, passed over in its own chunks, gets the statistics of the decoded one.
    """
    counts = None
    for images in chunks:
        if counts is None:
            counts = torch.zeros(images.shape[1], 256, dtype=torch.float64)
        for c in range(images.shape[1]):
            counts[c] += torch.bincount(images[:, c].reshape(-1), minlength=256)
        del images  # before the next chunk is read
    values = torch.arange(256, dtype=torch.float64) / 255.0
    n = counts.sum(1)
    mean = (counts * values).sum(1) / n
    squares = (counts * (values - mean[:, None]).square()).sum(1)
    std = (squares / (n - 1).clamp_min(1)).sqrt().clamp_min(1e-3)
    return tuple(mean.tolist()), tuple(std.tolist())
