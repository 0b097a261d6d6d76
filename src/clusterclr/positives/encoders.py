"""Trained encoders that mine semantic partners instead of the model being trained (``positives.encoder``).

Two kinds, both encoding the clean view of every training image:

- ``RunEncoder``: a trained clusterclr run. It takes the images it was
  trained on (channels and size) and normalises them as it did.
- ``WeightsEncoder``: a pretrained weights file (``models.pretrained``), the
  paper's setting. It sees the images as its weights expect them: grey
  repeated into its channels, resized to its resolution, normalised with its
  statistics, whatever size the run trains at.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from clusterclr.augment import ViewMaker, recipe_for
from clusterclr.config import AugmentConfig
from clusterclr.errors import UserError
from clusterclr.models.pretrained import Pretrained

if TYPE_CHECKING:
    from clusterclr.methods.base import Method
    from clusterclr.methods.training_images import TrainingImages


class TrainedModel(Protocol):
    """What a run encoder needs of a trained model (``build.Model``): its method and the views it was trained with."""

    method: Method
    views: ViewMaker


@dataclass
class RunEncoder:
    model: TrainedModel
    source: str  # the run directory or checkpoint, for messages

    def features(self, images: TrainingImages) -> torch.Tensor:
        """N × D features of every training image's clean view, normalised as the run normalised its own."""
        trained_on = (self.model.method.data.channels, *self.model.method.data.image_size)
        here = tuple(images.images.shape[1:])
        if trained_on != here:
            raise UserError(
                f"positives.encoder {self.source} was trained on {_shape(trained_on)} images but the training images are "
                f"{_shape(here)}; give an encoder trained on images like these (or set data.image_size)"
            )
        return dataclasses.replace(images, views=self.model.views).encode(self.model.method.embed, self.model.method)


@dataclass
class WeightsEncoder:
    backbone: nn.Module
    views: ViewMaker  # the clean view normalised with the weights' statistics
    resolution: int
    source: str

    @classmethod
    def of(cls, pretrained: Pretrained, source: str, device: torch.device) -> WeightsEncoder:
        prep = pretrained.preprocessing
        size = (prep.resolution, prep.resolution)
        views = ViewMaker(recipe_for(AugmentConfig(), prep.resolution), size, len(prep.mean), prep.mean, prep.std)
        return cls(pretrained.backbone.to(device).eval(), views.to(device), prep.resolution, source)

    def features(self, images: TrainingImages) -> torch.Tensor:
        """N × D features of every training image's clean view, at the weights' resolution and channels."""
        pixels, channels = images.images, len(self.views.mean.flatten())
        if pixels.shape[1] != channels:
            if pixels.shape[1] != 1:
                raise UserError(f"positives.encoder {self.source} takes {channels}-channel images; the training images have {pixels.shape[1]}")
            pixels = pixels.expand(-1, channels, -1, -1)  # grey repeated into every channel, a chunk at a time

        def encode(x: torch.Tensor) -> torch.Tensor:
            if x.shape[-2:] != (self.resolution, self.resolution):
                x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", antialias=True, align_corners=False)
            return self.backbone(x)

        return dataclasses.replace(images, images=pixels, views=self.views).encode(encode, self.backbone)


def _shape(channels_height_width: tuple[int, ...]) -> str:
    channels, height, width = channels_height_width
    return f"{channels}-channel {height}×{width}"
