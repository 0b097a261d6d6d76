"""The report of a training run, written at the end of ``train`` and by ``clusterclr report RUN_DIR``."""

from __future__ import annotations

from pathlib import Path

from clusterclr.build import Parts
from clusterclr.report.content import run_report_content
from clusterclr.report.write import write_report


def report_run(parts: Parts, run_dir: Path, epoch: int) -> Path:
    """Write ``run_dir/report.html`` for the trained ``parts``; saves the run's k-means centroids too."""
    return write_report(run_dir, run_report_content(parts, run_dir, epoch))
