"""Semi-supervised evaluation: fine-tune the backbone and a linear classifier on a few labels.

The classifier starts at the linear probe fitted on the labelled subset's
frozen features (so fine-tuning begins from a sensible head rather than
from noise that would first wreck the backbone), then backbone and head
train together with cross-entropy on lightly augmented views (random
resized crop, and flips where the run used them), SGD with Nesterov
momentum and a cosine learning rate. The trained model is never changed:
a copy of the backbone is fine-tuned.
"""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from clusterclr.augment import ViewMaker, recipe_for
from clusterclr.build import Model
from clusterclr.config import AugmentConfig
from clusterclr.data.base import ImageDataset
from clusterclr.evaluate.features import embed
from clusterclr.evaluate.linear import fit_logistic, select_weight_decay, topk_accuracy
from clusterclr.progress import progress_bar

# Milder than the contrastive views: the labels must survive the augmentation.
CROP_SCALE = (0.5, 1.0)


@dataclass(frozen=True)
class FinetuneOptions:
    epochs: int = 30
    lr: float = 0.02
    batch_size: int = 32


class Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def finetune(
    model: Model, labelled: ImageDataset, test: ImageDataset, num_classes: int, options: FinetuneOptions, seed: int,
    progress: bool = True,
) -> dict[str, float]:
    """Test top-1 after fine-tuning on ``labelled``, and ``probe_top1``: the starting head's, frozen backbone."""
    features = embed(model, labelled).features
    weight_decay = select_weight_decay(features, labelled.labels, num_classes, seed)
    weight, bias = fit_logistic(features, labelled.labels, num_classes, weight_decay).folded()
    head = nn.Linear(weight.shape[1], num_classes)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    classifier = Classifier(copy.deepcopy(model.method.backbone), head).to(model.device, memory_format=torch.contiguous_format)
    probe_top1 = _test_top1(classifier, model, test)
    _train(classifier, model, labelled, options, seed, progress)
    return {"top1": _test_top1(classifier, model, test), "probe_top1": probe_top1}


def _train(
    classifier: Classifier, model: Model, labelled: ImageDataset, options: FinetuneOptions, seed: int, progress: bool
) -> None:
    flips = model.views.recipe.flip_prob
    height, width = labelled.image_size
    plain_crops = AugmentConfig(preset="cifar", crop_scale=CROP_SCALE, flip_prob=flips, jitter_prob=0.0, grayscale_prob=0.0)
    recipe = recipe_for(plain_crops, min(height, width))
    augment = ViewMaker(recipe, (height, width), labelled.channels, tuple(model.normalisation["mean"]),
                        tuple(model.normalisation["std"]), model.config.train.channels_last).to(model.device)
    batch_size = min(options.batch_size, len(labelled))
    steps_per_epoch = math.ceil(len(labelled) / batch_size)
    total = options.epochs * steps_per_epoch
    optimizer = torch.optim.SGD(classifier.parameters(), lr=options.lr, momentum=0.9, nesterov=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the augmentations draw from the global generator
    autocast = torch.autocast(model.device.type, dtype=model.autocast_dtype) if model.autocast_dtype else nullcontext()
    labels = labelled.labels.to(model.device)
    classifier.train()
    bar = progress_bar(total=total, desc=f"fine-tuning on {len(labelled)} labels", unit="step", enabled=progress, leave=False)
    with bar, torch.enable_grad():
        for _ in range(options.epochs):
            order = torch.randperm(len(labelled), generator=generator)
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                if len(rows) < 2:  # batch norm cannot train on a single image
                    continue
                x = augment(labelled.images[rows].to(model.device), num_views=1)[0]
                with autocast:
                    logits = classifier(x)
                loss = F.cross_entropy(logits.float(), labels[rows.to(model.device)])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)


@torch.no_grad()
def _test_top1(classifier: Classifier, model: Model, test: ImageDataset) -> float:
    classifier.eval()
    autocast = torch.autocast(model.device.type, dtype=model.autocast_dtype) if model.autocast_dtype else nullcontext()
    logits = []
    for x, _ in model.views.clean_batches(test.images, model.config.eval.batch_size, model.device):
        with autocast:
            logits.append(classifier(x).float().cpu())
    return topk_accuracy(torch.cat(logits).numpy(), test.labels.numpy(), 1)
