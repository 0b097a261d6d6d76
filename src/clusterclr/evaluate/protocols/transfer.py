"""Transfer protocol: a model trained on data set A, evaluated on data set B (kNN and linear probe).

B's labelled train split is the kNN bank and the probe's training set; B's
test split (or held-out part of train) is scored. B's images are brought to
what the model takes: resized (bilinear, antialiased) to its square training
resolution, greyscale repeated into three channels for a colour model, colour
turned into luminance (ITU-R BT.601) for a greyscale one; they are then
normalised with A's statistics, as the model saw A. Each conversion made is
recorded in the results.
"""

from __future__ import annotations

from typing import Any

from clusterclr.build import Model
from clusterclr.config import DataConfig
from clusterclr.data.base import ImageDataset
from clusterclr.data.splits import load_splits, resize, with_channels
from clusterclr.errors import UserError
from clusterclr.evaluate.context import EvalContext
from clusterclr.evaluate.protocols import knn, linear
from clusterclr.evaluate.protocols.options import ProtocolOptions

STOCHASTIC = True  # through the linear probe's validation split


def context(model: Model, data: DataConfig, progress: bool) -> EvalContext:
    splits = load_splits(data)
    if not splits.labelled:
        raise UserError(f"transfer needs a labelled data set B; '{data.dataset}' has no labels")
    (bank, conversions), (test, _) = (adapt(part, model) for part in (splits.bank, splits.test))
    return EvalContext(model, data.dataset, bank, test, splits.eval_split, splits.num_classes, progress, conversions)


def settings(ctx: EvalContext, options: ProtocolOptions) -> dict[str, Any]:
    source = ctx.model.config.data
    return {
        "trained_on": source.dataset,
        "dataset": ctx.dataset,
        "root": options.transfer_data.root if options.transfer_data else None,
        "conversions": ctx.conversions,
        "knn": knn.settings(ctx, options),
        "linear": linear.settings(ctx, options),
    }


def run(ctx: EvalContext, options: ProtocolOptions, seed: int) -> dict[str, float]:
    scores = {f"knn_{name}": value for name, value in knn.run(ctx, options, seed).items()}
    scores.update({f"linear_{name}": value for name, value in linear.run(ctx, options, seed).items()})
    return scores


def adapt(dataset: ImageDataset, model: Model) -> tuple[ImageDataset, list[str]]:
    """``dataset`` with the channels and size ``model`` was trained on, and the conversions made, in words."""
    channels, size = model.method.data.channels, model.method.data.image_size
    if dataset.streamed and dataset.channels != channels:
        raise UserError(
            f"data set B is streamed from its files, whose {dataset.channels} channels a {channels}-channel model "
            "cannot take; read it into memory with --set data.stream=false"
        )
    adapted, conversion = with_channels(dataset, channels)
    done = [] if conversion is None else [conversion]
    if adapted.image_size == size:
        return adapted, done
    if size[0] != size[1]:
        raise UserError(
            f"the model was trained on {size[0]}x{size[1]} images and cannot take B's "
            f"{adapted.image_size[0]}x{adapted.image_size[1]}; give B at that size (data.image_size)"
        )
    done.append(f"resized {adapted.image_size[0]}x{adapted.image_size[1]} -> {size[0]}x{size[1]} (bilinear, antialiased)")
    return resize(adapted, size[0]), done
