"""Speed of SePP's semantic sampler: mining partners and ordering an epoch so they meet.

Times ``mine_partners`` (exact cosine top-k over N × D features) and
``partner_order`` on random features, for a few values of k. Prints a table
and appends it to BENCHMARKS.md with the command, date and machine.

    python benchmarks/mining.py --images 50000 --dim 128 --neighbours 1 5 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
from machine import append_result  # benchmarks/ is on the path when a script here runs

from clusterclr.build import select_device
from clusterclr.positives.semantic import mine_partners, partner_order


def seconds(work: Callable[[], object], device: torch.device, repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        work()
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--neighbours", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", default="BENCHMARKS.md")
    args = parser.parse_args()

    device = select_device(args.device)
    torch.manual_seed(0)
    features = torch.randn(args.images, args.dim, device=device)
    rows = []
    for k in args.neighbours:
        pairs = mine_partners(features, k)
        mining = seconds(lambda k=k: mine_partners(features, k), device, args.repeats)
        ordering = seconds(lambda p=pairs.partners: partner_order(p), device, args.repeats)
        rows.append((k, mining, ordering))
        print(f"k={k}: mining {mining:.2f} s, order {ordering:.2f} s", file=sys.stderr)
    lines = ["| images | dim | neighbours | mining (s) | epoch order (s) |", "|---|---|---|---|---|"]
    lines += [f"| {args.images:,} | {args.dim} | {k} | {m:.2f} | {o:.2f} |" for k, m, o in rows]
    table = "\n".join(lines)
    print(table)
    append_result(
        args.results,
        "SePP mining speed",
        f"random Gaussian features on {device.type}, exact cosine top-k (`mine_partners`) and the partner-adjacent "
        f"epoch order (`partner_order`), median of {args.repeats}",
        table,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
