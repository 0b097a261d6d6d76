"""Training from a folder of JPEGs too large for memory: whether memory stays flat, and who is the bound.

Writes synthetic folders of JPEGs (``--sizes``, default 5,000 and 40,000
images of ``--side`` px: rows of the shared CIFAR-10 subset upscaled, each
with its own colour shift, or procedural patterns without ``--cifar``; kept
under ``--folders`` for the next run), then for each size, in a fresh
process so its peak memory is its own, trains SimCLR streamed from the
folder at ``--image-size`` px (``data.stream: true``) and records:

- peak resident memory of the training process (``ru_maxrss``), and of its
  largest loader worker: the flat-memory claim is that the training
  process's peak grows by less than 10% from the smallest folder to the largest;
- images/s the loader alone delivers (decode, random resized crops at full
  resolution, pinned batches) with each of ``--workers`` worker processes;
- images/s the training step consumes on batches already loaded (views on
  the device, forward, backward, step), and the rate of both together with
  the most workers: when the loader's rate is below the step's, the loader
  is the bound (add workers, or shard the data over machines).

Prints a table and appends it to BENCHMARKS.md.

    python benchmarks/streaming.py --cifar ../shared/data/cifar-10-batches-py
    python benchmarks/streaming.py --sizes 200 400 --side 64 --image-size 32 --batch 32 --steps 3 --workers 0 1  # smoke
    python benchmarks/streaming.py --device cuda --backbone resnet50 --width 1 --image-size 224 --side 320 --sizes 20000 --workers 8
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from machine import append_result  # benchmarks/ is on the path when a script here runs

CHILD = "--measure-folder"


def write_folder(folder: Path, count: int, side: int, cifar: Path | None) -> Path:
    """``count`` JPEGs of side × side px in ``folder`` (reused when a finished one is there)."""
    from PIL import Image

    done = folder / ".complete"
    if done.is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    if cifar is not None:
        from clusterclr.data.cifar import load_cifar10

        rows = load_cifar10(cifar).train.images.numpy().transpose(0, 2, 3, 1)
    for i in range(count):
        if cifar is not None:
            picture = Image.fromarray(rows[i % len(rows)]).resize((side, side), Image.Resampling.BICUBIC)
            shifted = np.asarray(picture, dtype=np.int16) + rng.integers(-24, 25, 3)  # no two files alike
            picture = Image.fromarray(shifted.clip(0, 255).astype(np.uint8))
        else:
            y, x = np.mgrid[0:side, 0:side] / side
            phase = rng.uniform(0, 2 * np.pi, 3)
            frequency = rng.uniform(1, 8, 3)
            channels = [np.sin(2 * np.pi * f * (x + y * k) + p) for f, p, k in zip(frequency, phase, rng.uniform(-1, 1, 3))]
            picture = Image.fromarray(((np.stack(channels, -1) + 1) * 127.5).astype(np.uint8))
        picture.save(folder / f"img_{i:07d}.jpg", quality=90)
    done.write_text(str(count))
    return folder


def measure(args: argparse.Namespace) -> dict:
    """In a fresh process: the loader's rate per worker count, the step's rate, both together, and peak memory."""
    import torch

    from clusterclr.build import build_parts, training_batches
    from clusterclr.configure import build_config
    from clusterclr.rundir import RunDir
    from clusterclr.training.loop import Trainer

    torch.set_num_threads(args.threads)
    overrides = [
        f"data.image_size={args.image_size}", "data.stream=true", f"model.backbone={args.backbone}", f"model.width={args.width}",
        f"optim.batch_size={args.batch}", f"train.device={args.device}", "train.progress=false", "train.epochs=1", "clusters=10",
    ]
    config = build_config(flags={"data.dataset": "folder", "data.root": args.measure_folder}, overrides=overrides)
    trainer = Trainer(build_parts(config), RunDir(Path(args.folders) / "unused-run"))
    images = trainer.parts.splits.train.images
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    device = trainer.parts.device

    def endless(data):  # the timed batches may outnumber one epoch's on the smallest folder
        epoch = 0
        while True:
            yield from data.batches(order, epoch=epoch)
            epoch += 1

    def synchronise() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    loader = {}
    for workers in args.workers:
        images.workers = workers
        data = training_batches(trainer.parts)  # a loader of its own for each worker count
        stream = endless(data)
        next(stream)  # worker start-up and the first batch: not the steady state
        start = time.perf_counter()
        for _ in range(args.steps):
            next(stream)
        loader[str(workers)] = args.steps * args.batch / (time.perf_counter() - start)
        del stream, data
    ready = [host for _, host in zip(range(2), trainer.data.batches(order, epoch=0))]
    trainer.method.train()
    for host in ready:  # warm-up
        trainer.optimise(trainer.loss(host), 0)
    synchronise()
    start = time.perf_counter()
    for i in range(args.steps):
        trainer.optimise(trainer.loss(ready[i % 2]), i)
    synchronise()
    step_rate = args.steps * args.batch / (time.perf_counter() - start)
    images.workers = max(args.workers)
    data = training_batches(trainer.parts)
    stream = endless(data)
    trainer.optimise(trainer.loss(next(stream)), 0)
    synchronise()
    start = time.perf_counter()
    for i in range(args.steps):
        trainer.optimise(trainer.loss(next(stream)), i)
    synchronise()
    together = args.steps * args.batch / (time.perf_counter() - start)
    del stream, data
    return {
        "images": len(images), "loader": loader, "step": step_rate, "together": together,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 40000], help="images per synthetic folder")
    parser.add_argument("--side", type=int, default=256, help="px of the JPEGs written")
    parser.add_argument("--image-size", type=int, default=96, help="data.image_size: the crops' size")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, os.cpu_count() or 1])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20, help="timed batches for each rate")
    parser.add_argument("--backbone", default="resnet18", choices=["resnet18", "resnet34", "resnet50"])
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=torch_threads_default(), help="torch threads of the training process")
    parser.add_argument("--cifar", type=Path, help="the CIFAR-10 batches to upscale (default: procedural images)")
    parser.add_argument("--folders", default="/tmp/clusterclr-streaming", help="where the synthetic folders are kept")
    parser.add_argument("--results", default="BENCHMARKS.md")
    parser.add_argument(CHILD, dest="measure_folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_folder:
        print(json.dumps(measure(args)))
        return 0

    os.environ.setdefault("CLUSTERCLR_CACHE", str(Path(args.folders) / "cache"))
    rows = []
    for size in args.sizes:
        folder = write_folder(Path(args.folders) / f"jpeg{args.side}-{size}", size, args.side, args.cifar)
        command = [sys.executable, *sys.argv, CHILD, str(folder)]
        child = subprocess.run(command, capture_output=True, text=True)
        if child.returncode != 0:
            sys.exit(f"measuring {folder} failed:\n{child.stderr}")
        result = json.loads(child.stdout.splitlines()[-1])
        rows.append(result)
        print(f"{size} images: peak RSS {result['peak_rss_mb']:.0f} MiB, step {result['step']:.0f} img/s", file=sys.stderr)
    workers = args.workers
    lines = [
        "| images | peak RSS, training process (MiB) | peak RSS, largest worker (MiB) | "
        + " | ".join(f"loader, {w} worker{'s' if w != 1 else ''} (img/s)" for w in workers)
        + f" | step alone (img/s) | loader + step, {max(workers)} worker{'s' if max(workers) != 1 else ''} (img/s) |",
        "|---" * (5 + len(workers)) + "|",
    ]
    for r in rows:
        rates = " | ".join(f"{r['loader'][str(w)]:.0f}" for w in workers)
        lines.append(f"| {r['images']} | {r['peak_rss_mb']:.0f} | {r['worker_peak_rss_mb']:.0f} | {rates} "
                     f"| {r['step']:.0f} | {r['together']:.0f} |")
    growth = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"] - 1
    table = "\n".join(lines) + f"\n\nPeak RSS of the training process grew {growth:+.1%} from {rows[0]['images']} to {rows[-1]['images']} images."
    print(table)
    append_result(
        args.results,
        "Streamed training from a folder of JPEGs",
        f"SimCLR, {args.backbone} ×{args.width}, {args.side} px JPEGs ({'CIFAR-10 rows upscaled' if args.cifar else 'procedural'}) "
        f"cropped to {args.image_size} px in the loader, batch {args.batch}, {args.steps} timed batches per rate, "
        f"device {args.device}, torch threads: {args.threads} (the table's images: the training split after the holdout)",
        table,
    )
    return 0


def torch_threads_default() -> int:
    return max(1, (os.cpu_count() or 1) // 2)


if __name__ == "__main__":
    sys.exit(main())
