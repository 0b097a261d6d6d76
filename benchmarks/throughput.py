"""How close each method's training step comes to the bare backbone's speed.

For one backbone, resolution and batch, measured in one run on one device:

(a) the practical bound: the backbone's forward + backward + SGD step on
    pre-made views (both views of every image, already normalised and on
    the device), at the training precision and memory format;
(b) each method's full training step, exactly as the training loop runs it
    (``Trainer.loss`` and ``Trainer.optimise``): uint8 images to the device,
    augmentation, heads, losses, queue / memory-bank / EMA updates.

Rates are training images per second (an image brings its views); the ratio
(b)/(a) is what the method keeps of the bound. Peak memory: CUDA's
max_memory_allocated per row, or on the CPU the process's peak RSS so far
(it only grows, so later rows carry earlier ones' peak). The data are
random uint8 images: speed does not depend on content. Each method uses
its CIFAR-10-subset preset's options (``configs/cifar10_subset_METHOD.yaml``)
where one exists. Prints a table and appends it to BENCHMARKS.md.

    python benchmarks/throughput.py --backbone resnet18 --width 0.25 --size 32 --batch 256 --steps 5
    python benchmarks/throughput.py --device cuda --backbone resnet50 --width 1 --size 224 --batch 256 --steps 30
"""

from __future__ import annotations

import argparse
import resource
import shlex
import sys
import time
from contextlib import nullcontext
from datetime import date
from pathlib import Path

import torch

from clusterclr.build import Parts, build_model, select_device, select_precision
from clusterclr.config import build_config, read_yaml
from clusterclr.data.base import ImageDataset
from clusterclr.data.splits import DataSplits
from clusterclr.methods.base import DataInfo
from clusterclr.train import Trainer

from machine import machine  # benchmarks/ is on the path when a script here runs

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


def timed(step, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per step, over ``steps`` steps after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
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
    overrides = [
        f"model.backbone={args.backbone}", f"model.width={args.width}", f"optim.batch_size={args.batch}",
        f"train.device={args.device}", f"train.precision={args.precision}", f"train.channels_last={args.channels_last}",
        f"train.compile={args.compile}", "train.progress=false", "train.epochs=1000",
    ]
    if method.startswith("sepp_"):
        overrides.append("positives.warmup_epochs=0")  # measured with partners in the batch, as after warm-up
    config = build_config(tree, overrides=overrides)
    dataset = ImageDataset(images, torch.arange(len(images)) % 10)
    data = DataInfo(len(images), 10, 3, (args.size, args.size))
    torch.manual_seed(0)
    model = build_model(config, data, {"mean": [0.5] * 3, "std": [0.25] * 3})
    parts = Parts(**vars(model), splits=DataSplits("random", dataset, dataset, dataset, "test"), eval_clusters=10)
    return Trainer(parts, run_dir=Path("unused"))


def method_rate(args: argparse.Namespace, method: str, images: torch.Tensor) -> tuple[float, float]:
    trainer = build_trainer(args, method, images)
    device = trainer.parts.device
    trainer.method.train()
    trainer.method.on_epoch_start(0, trainer.training_images)  # k-means, mining: untimed, as between epochs
    torch.manual_seed(1)
    order = trainer.method.epoch_order()
    count = iter(range(10**9))

    def step() -> None:
        i = next(count) % trainer.steps_per_epoch
        indices = order[i * args.batch : (i + 1) * args.batch]
        trainer.optimise(trainer.loss(images[indices], indices), i)

    reset_peak(device)
    seconds = timed(step, args.steps, args.warmup, device)
    return args.batch / seconds, peak_memory_mb(device)


def bound_rate(args: argparse.Namespace, images: torch.Tensor) -> tuple[float, float]:
    """(a): the backbone alone, on both views of every image, made beforehand."""
    trainer = build_trainer(args, "simclr", images)
    device, backbone = trainer.parts.device, trainer.method.backbone
    views = trainer.parts.views(images[: args.batch].to(device), 2)
    x = torch.cat(views)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(backbone.parameters(), lr=0.01, momentum=0.9)
    dtype = trainer.parts.autocast_dtype
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype) if dtype else nullcontext():
            loss = backbone(x).float().square().mean()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    backbone.train()
    reset_peak(device)
    seconds = timed(step, args.steps, args.warmup, device)
    return args.batch / seconds, peak_memory_mb(device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18", choices=["resnet18", "resnet34", "resnet50"])
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
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
    bound, bound_memory = bound_rate(args, images)
    print(f"backbone bound: {bound:.0f} img/s", file=sys.stderr)
    rows = [("backbone alone (bound)", bound, bound_memory)]
    for method in args.methods:
        rate, memory = method_rate(args, method, images)
        rows.append((method, rate, memory))
        print(f"{method}: {rate:.0f} img/s, {rate / bound:.2f} of the bound", file=sys.stderr)
    device = select_device(args.device)
    memory_label = "peak CUDA memory (MiB)" if device.type == "cuda" else "peak RSS so far (MiB)"
    lines = [f"| step | images/s | of bound | {memory_label} |", "|---|---|---|---|"]
    lines += [f"| {name} | {rate:.0f} | {rate / bound:.2f} | {memory:.0f} |" for name, rate, memory in rows]
    table = "\n".join(lines)
    print(table)
    precision = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast + scaler"}[select_precision(args.precision, device)]
    command = "python benchmarks/throughput.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    with open(args.results, "a", encoding="utf-8") as f:
        f.write(
            f"\n### Training throughput against the backbone bound ({date.today().isoformat()})\n\n"
            f"- command: `{command}`\n"
            f"- setting: {args.backbone} ×{args.width}, {args.size} px, batch {args.batch}, {precision}, "
            f"{'channels-last' if args.channels_last else 'default layout'}{', torch.compile' if args.compile else ''}, "
            f"{args.steps} timed steps after {args.warmup} warm-up, on {device}\n"
            f"- machine: {machine()}\n\n{table}\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
