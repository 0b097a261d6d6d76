"""How close each method's training step comes to the bare backbone's speed.

For one backbone, resolution and batch, measured in one run on one device:

(a) each method's bound: the backbone alone making exactly the backbone
    calls the method's step makes, recorded by hooks during one probe step
    (the same batch sizes, with backward or forward-only: SimCLR one call
    on both views with backward; MoCo v2 its query view with backward and
    its key view forward-only, each in shuffle-BN groups; the centre
    predictor a third, clean view), on views made beforehand (augmented,
    normalised, on the device), plus an SGD step, at the training precision
    and memory format. Per-image speed depends on the call's batch size,
    so the sizes are kept;
(b) the method's full training step, exactly as the training loop runs it
    (``Trainer.loss`` and ``Trainer.optimise``): uint8 images to the device,
    augmentation, heads, losses, queue / memory-bank / EMA updates.

(a) and (b) alternate in ``--rounds`` rounds, so a drift in the machine's
speed hits both; the ratio (b)/(a) is the median of the rounds' ratios, the
rates are medians too. Rates are training images per second (an image
brings its views). Every warm-up option (``*warmup_epochs``) is set to 0:
the steady-state step, with clusters, prototypes and partners in play.
Peak memory: CUDA's max_memory_allocated during the rounds, or on the CPU
the process's peak RSS so far (it only grows, so later rows carry earlier
ones' peak). The data are random uint8 images: speed does not depend on
content. Each method uses its CIFAR-10-subset preset's options
(``configs/cifar10_subset_METHOD.yaml``) where one exists. Prints a table
and appends it to BENCHMARKS.md.

    python benchmarks/throughput.py --backbone resnet18 --width 0.25 --size 32 --batch 256 --methods simclr moco_v2
    python benchmarks/throughput.py --device cuda --backbone resnet50 --width 1 --size 224 --batch 256 --steps 10
"""

from __future__ import annotations

import argparse
import copy
import itertools
import resource
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from machine import append_result  # benchmarks/ is on the path when a script here runs

from clusterclr.build import Parts, build_model, select_device, select_precision
from clusterclr.configure import build_config
from clusterclr.data.base import ImageDataset
from clusterclr.data.splits import DataSplits
from clusterclr.layering import read_yaml
from clusterclr.methods.base import DataInfo
from clusterclr.models.backbones import ResNet
from clusterclr.rundir import RunDir
from clusterclr.training.batches import HostBatch
from clusterclr.training.loop import Trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEFAULT_METHODS = ["simclr", "moco_v2", "simsiam", "byol", "cc", "center_predictor", "interclr", "pcl", "sepp_simclr", "sepp_moco_v2"]


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def seconds_per_step(step: Callable[[], None], steps: int, device: torch.device) -> float:
    synchronise(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronise(device)
    return (time.perf_counter() - start) / steps


def build_trainer(args: argparse.Namespace, method: str, images: torch.Tensor) -> Trainer:
    preset = CONFIGS / f"cifar10_subset_{method}.yaml"
    tree = read_yaml(preset) if preset.exists() else {}
    tree = {"method": tree.get("method", {"name": method}), "positives": tree.get("positives")}
    tree = {key: value for key, value in tree.items() if value is not None}
    for section in tree.values():
        # The steady-state step: clustering, prototypes and partners in play from the first step, as after warm-up.
        section.update({key: 0 for key in section if key.endswith("warmup_epochs")})
    overrides = [
        f"model.backbone={args.backbone}", f"model.width={args.width}", f"optim.batch_size={args.batch}",
        f"train.device={args.device}", f"train.precision={args.precision}", f"train.channels_last={args.channels_last}",
        f"train.compile={args.compile}", "train.progress=false", "train.epochs=1000",
    ]
    config = build_config(tree, overrides=overrides)
    dataset = ImageDataset(images, torch.arange(len(images)) % 10)
    data = DataInfo(len(images), 10, 3, (args.size, args.size), clusters=10)
    torch.manual_seed(0)
    model = build_model(config, data, {"mean": [0.5] * 3, "std": [0.25] * 3})
    parts = Parts(**vars(model), splits=DataSplits("random", dataset, dataset, dataset, "test"))
    return Trainer(parts, run_dir=RunDir("unused"))


def method_step(trainer: Trainer, images: torch.Tensor) -> Callable[[], None]:
    """One training step on the next batch of ``images``, as the training loop makes it."""
    trainer.method.train()
    trainer.method.on_epoch_start(0, trainer.training_images)  # k-means, mining: untimed, as between epochs
    torch.manual_seed(1)
    order = trainer.method.epoch_order()
    batch = trainer.config.optim.batch_size
    count = itertools.count()

    def step() -> None:
        i = next(count) % trainer.steps_per_epoch
        indices = order[i * batch : (i + 1) * batch]
        trainer.optimise(trainer.loss(HostBatch(indices, images=images[indices])), i)

    return step


def backbone_calls(method: torch.nn.Module, step: Callable[[], None]) -> list[tuple[int, bool]]:
    """The backbone calls (online or momentum copy) of one ``step``, in order: (images, with backward)."""
    calls = []

    def record(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        calls.append((len(inputs[0]), output.requires_grad))

    hooks = [module.register_forward_hook(record) for module in method.modules() if isinstance(module, ResNet)]
    try:
        step()
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def bound_step(trainer: Trainer, images: torch.Tensor, calls: list[tuple[int, bool]], channels_last: bool) -> Callable[[], None]:
    """The backbone alone making ``calls`` on views made beforehand, then an SGD step.

    Same call sizes as the method's, since per-image speed depends on the
    batch a call sees. A copy of the backbone: the method's own stays untouched.
    """
    device = trainer.parts.device
    backbone = copy.deepcopy(trainer.method.backbone).train()
    batch = trainer.config.optim.batch_size
    largest = max(size for size, _ in calls)
    views = torch.cat(trainer.parts.views(images[:batch].to(device), -(-largest // batch)))
    if channels_last:
        views = views.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(backbone.parameters(), lr=0.01, momentum=0.9)
    dtype = trainer.parts.autocast_dtype
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def step() -> None:
        loss = torch.zeros((), device=device)
        with torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
            for size, with_backward in calls:
                with nullcontext() if with_backward else torch.no_grad():
                    out = backbone(views[:size])
                if with_backward:
                    loss = loss + out.float().square().mean()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


@dataclass
class Row:
    method: str
    calls: list[tuple[int, bool]]
    rate: float
    bound: float
    ratio: float
    memory_mb: float

    def markdown(self) -> str:
        def sizes(with_backward: bool) -> str:
            return ", ".join(str(size) for size, backward in self.calls if backward == with_backward) or "–"

        return (
            f"| {self.method} | {sizes(True)} | {sizes(False)} | {self.rate:.0f} | {self.bound:.0f} "
            f"| {self.ratio:.2f} | {self.memory_mb:.0f} |"
        )


def measure(args: argparse.Namespace, method: str, images: torch.Tensor) -> Row:
    """The method's step against its bound, alternating ``args.rounds`` times."""
    trainer = build_trainer(args, method, images)
    device = trainer.parts.device
    step = method_step(trainer, images)
    calls = backbone_calls(trainer.method, step)
    bound = bound_step(trainer, images, calls, args.channels_last)
    for _ in range(args.warmup):
        step()
        bound()
    reset_peak(device)
    bound_seconds, method_seconds = [], []
    for _ in range(args.rounds):
        bound_seconds.append(seconds_per_step(bound, args.steps, device))
        method_seconds.append(seconds_per_step(step, args.steps, device))
    ratio = statistics.median(b / m for b, m in zip(bound_seconds, method_seconds))
    rate, bound_rate = (args.batch / statistics.median(seconds) for seconds in (method_seconds, bound_seconds))
    return Row(method, calls, rate, bound_rate, ratio, peak_memory_mb(device))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18", choices=["resnet18", "resnet34", "resnet50"])
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round, for the method and for its bound")
    parser.add_argument("--rounds", type=int, default=10, help="alternations of bound and method; the ratio is their median")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps of each before the rounds")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--channels-last", default=True, action=argparse.BooleanOptionalAction)
    parser.add_argument("--compile", default=False, action=argparse.BooleanOptionalAction)
    parser.add_argument("--images", type=int, default=4096, help="random training images (queues and banks index them)")
    parser.add_argument("--results", default="BENCHMARKS.md")
    args = parser.parse_args()
    if args.images < 2 * args.batch:
        parser.error(f"--images must be at least twice --batch ({2 * args.batch})")

    images = torch.randint(0, 256, (args.images, 3, args.size, args.size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    rows = []
    for method in args.methods:
        rows.append(measure(args, method, images))
        print(f"{method}: {rows[-1].rate:.0f} img/s, {rows[-1].ratio:.2f} of its bound", file=sys.stderr)
    device = select_device(args.device)
    memory_label = "peak CUDA memory (MiB)" if device.type == "cuda" else "peak RSS so far (MiB)"
    lines = [
        f"| method | backbone calls with backward (images) | forward-only calls | images/s | bound images/s | of bound | {memory_label} |",
        "|---|---|---|---|---|---|---|",
    ]
    table = "\n".join(lines + [row.markdown() for row in rows])
    print(table)
    precision = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast + scaler"}[select_precision(args.precision, device)]
    append_result(
        args.results,
        "Training throughput against the backbone bound",
        f"{args.backbone} ×{args.width}, {args.size} px, batch {args.batch}, {precision}, "
        f"{'channels-last' if args.channels_last else 'default layout'}{', torch.compile' if args.compile else ''}, "
        f"{args.rounds} rounds of {args.steps} timed steps each way after {args.warmup} warm-up, on {device}",
        table,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
