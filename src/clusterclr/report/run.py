"""The report of a training run, written at the end of ``train`` and by ``clusterclr report RUN_DIR``."""

from __future__ import annotations

from pathlib import Path

from clusterclr.build import Parts
from clusterclr.evaluate.context import EvalContext
from clusterclr.report.content import run_report_content
from clusterclr.report.write import write_report
from clusterclr.rundir import RunDir


def report_run(parts: Parts, run_dir: RunDir, epoch: int, ctx: EvalContext | None = None) -> Path:
    """Write the run's report.html for the trained ``parts``; saves the run's k-means centroids too."""
    return write_report(run_dir, run_report_content(parts, run_dir, epoch, ctx))
