"""The run directory: where every file of a run lives, and its life cycle (create, open, find, compare).

```
RUN_DIR/
  config.yaml            the resolved configuration
  checkpoints/last.pt    newest checkpoint (previous.pt: the one before)
  metrics.jsonl          the log: one JSON line per step, epoch, evaluation
  tensorboard/           the same scalars for TensorBoard
  metrics.json           final scores, and each evaluation protocol's section
  report.html, report/   the report and its figures
  centroids.npy          k-means centroids that ``assign`` uses
  cluster_stage.pt       a clustering stage's settings, progress and kept head (``clusterclr stage``)
  near_duplicates.csv, atypical.csv   the report's near-duplicate groups and atypical images
  skipped_files.txt      image files left out (``data.skip_bad``)
  clusters.csv, embeddings.npy   what ``clusterclr cluster`` writes
```
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clusterclr.config import Config
from clusterclr.configure import validate
from clusterclr.errors import UserError
from clusterclr.io import load_newest_checkpoint, previous_checkpoint, write_text
from clusterclr.layering import read_yaml
from clusterclr.pathtext import path_from_text

if TYPE_CHECKING:
    from clusterclr.data.base import BadFile

RUNS = Path("runs")  # where runs go unless --out says otherwise


class RunDir:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoints" / "last.pt"

    @property
    def log(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    @property
    def figures(self) -> Path:
        return self.path / "report"

    @property
    def centroids(self) -> Path:
        return self.path / "centroids.npy"

    @property
    def cluster_stage(self) -> Path:
        return self.path / "cluster_stage.pt"

    @property
    def near_duplicates_csv(self) -> Path:
        return self.path / "near_duplicates.csv"

    @property
    def atypical_csv(self) -> Path:
        return self.path / "atypical.csv"

    @property
    def skipped_files(self) -> Path:
        return self.path / "skipped_files.txt"

    @property
    def clusters_csv(self) -> Path:
        return self.path / "clusters.csv"

    @property
    def embeddings(self) -> Path:
        return self.path / "embeddings.npy"

    # -- life cycle ----------------------------------------------------------------
    @classmethod
    def new_name(cls, *parts: str, under: Path = RUNS) -> RunDir:
        """``runs/PART-PART-DATE-TIME``: the default place of a new run."""
        return cls(under / "-".join([*parts, time.strftime("%Y%m%d-%H%M%S")]))

    @classmethod
    def newest(cls, under: Path = RUNS) -> RunDir:
        """The run under ``under`` whose checkpoint was written last."""
        checkpoints = list(under.glob("*/checkpoints/*.pt")) if under.is_dir() else []
        if not checkpoints:
            raise UserError(f"--resume auto found no run under {under}/ to continue; name it with --resume RUN_DIR")
        return cls(max(checkpoints, key=lambda path: path.stat().st_mtime).parents[1])

    def holds_run(self) -> bool:
        return self.checkpoint.exists() or previous_checkpoint(self.checkpoint).exists()

    def create(self) -> None:
        """Make the directory for a new run: refused if it already holds one or cannot be written."""
        if self.holds_run():
            raise UserError(f"{self} already holds a run; continue it with --resume {self} or choose another --out")
        self.check_writable()

    def check_writable(self) -> None:
        """Fail before any work if the directory cannot be written."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"{self} is a file, not a run directory; choose another --out")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.path):
                pass
        except OSError as err:
            raise UserError(f"cannot write to run directory {self}: {err.strerror or err}") from None

    def read(self) -> tuple[Config, dict[str, Any], Path]:
        """The validated config, the state and the path of the newest readable checkpoint."""
        if not self.path.is_dir():
            raise UserError(f"run directory not found: {self}")
        state, path = load_newest_checkpoint(self.checkpoint)
        return validate(state["config"], source=f"config in {path}"), state, path

    def open_to_continue(self) -> tuple[dict[str, Any], Path]:
        """The newest readable checkpoint and its path, the directory made ready to go on writing."""
        if not self.path.is_dir():
            raise UserError(f"run directory not found: {self}")
        newest = self.checkpoint
        state, path = load_newest_checkpoint(newest)
        self.check_writable()
        if path != newest and newest.exists():
            # Kept for a look, and out of the way: the next save would otherwise rotate it over the good one.
            os.replace(newest, newest.with_suffix(".unreadable"))
        # Temporary files of checkpoint writes cut short by a kill: as large as a checkpoint, and useless.
        for stale in newest.parent.glob(f".{newest.name}.*.tmp"):
            stale.unlink(missing_ok=True)
        return state, path

    def check_same_config(self, config: Config) -> None:
        """Refuse to continue this run with settings other than those it was started with."""
        saved = validate(read_yaml(self.config_file), source=str(self.config_file))
        different = _differences(saved.model_dump(mode="json"), config.model_dump(mode="json"))
        if different:
            raise UserError(
                f"{self} holds a run with a different config ({', '.join(different[:5])}); "
                "give the flags it was started with, none at all, or another --out"
            )

    def write_config(self, config: Config) -> None:
        write_text(self.config_file, config.to_yaml())

    def write_skipped_files(self, skipped: Sequence[BadFile]) -> None:
        """``path<TAB>reason`` per file left out of training (paths as ``clusterclr.pathtext`` writes them);
        nothing is written when none was."""
        if skipped:
            write_text(self.skipped_files, "".join(f"{bad.line()}\n" for bad in skipped))

    def read_skipped_files(self) -> list[tuple[str, str]]:
        """The (exact path, reason) pairs ``write_skipped_files`` wrote, if any."""
        if not self.skipped_files.is_file():
            return []
        lines = self.skipped_files.read_text(encoding="utf-8").splitlines()
        return [(path_from_text(path), reason) for path, reason in (line.split("\t", 1) for line in lines if "\t" in line)]


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config trees."""
    different = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            different += _differences(x, y, f"{prefix}{key}.")
        elif x != y:
            different.append(f"{prefix}{key}")
    return different
