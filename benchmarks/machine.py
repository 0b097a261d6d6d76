"""The machine line every benchmark table carries, and the block that appends a table to BENCHMARKS.md."""

from __future__ import annotations

import platform
import shlex
import sys
from datetime import date
from pathlib import Path

import torch


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    threads = torch.get_num_threads()
    return f"{cpu}, {threads} thread{'s' if threads != 1 else ''}{gpu}, torch {torch.__version__}, Python {platform.python_version()}"


def append_result(results: str, title: str, setting: str, table: str) -> None:
    """Append ``table`` to ``results`` under ``title`` (dated), with the command that ran, ``setting`` and the machine."""
    command = " ".join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *map(shlex.quote, sys.argv[1:])])
    with open(results, "a", encoding="utf-8") as f:
        f.write(
            f"\n### {title} ({date.today().isoformat()})\n\n"
            f"- command: `{command}`\n- setting: {setting}\n- machine: {machine()}\n\n{table}\n"
        )
    print(f"appended to {results}", file=sys.stderr)
