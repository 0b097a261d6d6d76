"""Training-step throughput of a backbone under each precision and memory format.

What ``train.precision`` and ``train.channels_last`` buy on this machine:
one forward + backward + SGD step of the backbone on random images, for
fp32 / bf16 autocast, each in the default and the channels-last layout.
Prints a table (images per second and the ratio to plain fp32, measured in
one run) and appends it to BENCHMARKS.md with the command, date and machine.

    python benchmarks/precision.py --backbone resnet18 --width 0.25 --size 32 --batch 256
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import nullcontext

import torch
from machine import append_result  # benchmarks/ is on the path when a script here runs

from clusterclr.build import select_device
from clusterclr.models.backbones import build_backbone


def images_per_second(args: argparse.Namespace, device: torch.device, dtype: torch.dtype | None, channels_last: bool) -> float:
    torch.manual_seed(0)
    net = build_backbone(args.backbone, 3, "cifar" if args.size <= 64 else "imagenet", args.width).to(device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()

    def step() -> None:
        with autocast:
            loss = net(x).float().square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    timings = []
    for _ in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - start)
    return args.batch / statistics.median(timings)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--results", default="BENCHMARKS.md")
    args = parser.parse_args()

    device = select_device(args.device)
    rows = []
    for name, dtype in (("fp32", None), ("bf16 autocast", torch.bfloat16)):
        for channels_last in (False, True):
            rate = images_per_second(args, device, dtype, channels_last)
            rows.append((name, "channels-last" if channels_last else "default", rate))
            print(f"{name}, {rows[-1][1]}: {rate:.0f} img/s", file=sys.stderr)
    baseline = rows[0][2]
    lines = ["| precision | layout | images/s | vs fp32 default |", "|---|---|---|---|"]
    lines += [f"| {p} | {layout} | {rate:.0f} | {rate / baseline:.2f}× |" for p, layout, rate in rows]
    table = "\n".join(lines)
    print(table)
    append_result(
        args.results,
        "Training-step throughput by precision",
        f"{args.backbone} ×{args.width}, {args.size} px, batch {args.batch}, forward + backward + SGD step, "
        f"median of {args.repeats} steps on {device.type}",
        table,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
