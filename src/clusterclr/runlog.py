"""A run's log: one JSON line per logged step, epoch or evaluation, mirrored to TensorBoard."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from clusterclr.errors import UserError
from clusterclr.io import write_text


class RunLog:
    def __init__(
        self, path: Path, tensorboard: Path, keep_until_step: int | None = None, epoch_start_redone: bool = True
    ) -> None:
        """Append to the log at ``path`` (and TensorBoard's files in ``tensorboard``); lines past
        ``keep_until_step`` are dropped first (a resumed run redoes them).

        ``epoch_start_redone``: whether the resumed run starts by opening an
        epoch (it resumes at an epoch boundary), so that the "method" lines
        logged at ``keep_until_step`` are redone too.
        """
        self.path = path
        if keep_until_step is not None and self.path.exists():
            kept = [
                r for r in read_log(path)
                if r["step"] < keep_until_step
                or (r["step"] == keep_until_step and not (epoch_start_redone and r["kind"] == "method"))
            ]
            write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        try:
            self._file = self.path.open("a", encoding="utf-8")
        except OSError as err:
            raise UserError(f"cannot write {self.path}: {err.strerror or err}") from None
        self._tensorboard = SummaryWriter(log_dir=str(tensorboard), purge_step=keep_until_step)

    def write(self, kind: str, step: int, values: dict[str, Any]) -> None:
        """Append ``values`` for ``kind`` (step / epoch / eval / method) at global ``step``."""
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        try:
            self._file.write(json.dumps(record) + "\n")
            # Flushed per line so an interrupted run keeps everything logged so far.
            self._file.flush()
        except OSError as err:
            raise UserError(f"cannot write {self.path}: {err.strerror or err}; the last checkpoint is intact") from None
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self._tensorboard.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        self._tensorboard.close()
        try:
            self._file.close()
        except OSError as err:  # the last buffered line could not be written
            raise UserError(f"cannot write {self.path}: {err.strerror or err}") from None


def read_log(path: Path) -> list[dict[str, Any]]:
    """The records of the log at ``path`` (a run directory's ``metrics.jsonl``); none if it does not exist."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
    return records


class SilentLog:
    """A log that keeps nothing: the other ranks' of a distributed run, where rank 0 logs."""

    def write(self, kind: str, step: int, values: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass
