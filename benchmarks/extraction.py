"""Feature-extraction throughput of a ViT: what ``embed``, ``evaluate`` and ``cluster --weights`` run at.

Times clusterclr's own extraction path (``evaluate.features.embed``: batched
clean views, normalised on the device, channels-last, under the run's
precision) over random uint8 images, with a ViT of random weights (the
speed does not depend on the values), at each image size in fp32 and in
bf16 autocast. Prints a table (images per second, the median of several
passes, and the ratio to fp32 at the same size) and appends it to
BENCHMARKS.md with the command, date and machine.

    python benchmarks/extraction.py --backbone vit_small --patch 14 --sizes 224 112 --images 512 --batch 64
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from machine import append_result  # benchmarks/ is on the path when a script here runs

from clusterclr.build import build_model, select_device, select_precision
from clusterclr.configure import build_config
from clusterclr.data.base import ImageDataset
from clusterclr.evaluate.features import embed
from clusterclr.methods.base import DataInfo

PRECISIONS = {"fp32": "fp32", "bf16 autocast": "bf16"}


def images_per_second(args: argparse.Namespace, size: int, precision: str) -> float:
    config = build_config(overrides=[
        f"model.backbone={args.backbone}", f"model.patch_size={args.patch}", f"train.precision={precision}",
        f"train.device={args.device}", f"eval.batch_size={args.batch}", "train.progress=false",
    ])
    torch.manual_seed(0)
    data = DataInfo(args.images, None, 3, (size, size), clusters=2)
    model = build_model(config, data, {"mean": [0.5] * 3, "std": [0.25] * 3})
    images = ImageDataset(torch.randint(0, 256, (args.images, 3, size, size), dtype=torch.uint8))
    embed(model, ImageDataset(images.images[: args.batch]))  # warm-up: kernels chosen, memory allocated
    timings = []
    for _ in range(args.repeats):
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        embed(model, images)  # returns features on the host: the device has finished
        timings.append(time.perf_counter() - start)
    return args.images / statistics.median(timings)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="vit_small", choices=["vit_small", "vit_base", "vit_large"])
    parser.add_argument("--patch", type=int, default=14)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 112])
    parser.add_argument("--images", type=int, default=512, help="images per timed pass")
    parser.add_argument("--batch", type=int, default=64, help="eval.batch_size")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the median counts")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--results", default="BENCHMARKS.md")
    args = parser.parse_args()

    rows = []
    for size in args.sizes:
        for name, precision in PRECISIONS.items():
            rate = images_per_second(args, size, precision)
            rows.append((size, name, rate))
            print(f"{size} px, {name}: {rate:.1f} img/s", file=sys.stderr)
    fp32 = {size: rate for size, name, rate in rows if name == "fp32"}
    lines = ["| size | precision | images/s | vs fp32 |", "|---|---|---|---|"]
    lines += [f"| {size} | {name} | {rate:.1f} | {rate / fp32[size]:.2f}× |" for size, name, rate in rows]
    table = "\n".join(lines)
    print(table)
    device = select_device(args.device)
    native = select_precision("auto", device) == torch.bfloat16
    append_result(
        args.results,
        "Feature extraction throughput (ViT)",
        f"{args.backbone}/{args.patch}, random weights, {args.images} images per pass, batch {args.batch}, median of "
        f"{args.repeats} passes of clusterclr's embed on {device.type}; bf16 native here: {'yes' if native else 'no'}",
        table,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
