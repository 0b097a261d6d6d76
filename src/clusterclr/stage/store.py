"""A run's clustering stage on disk: its settings, its progress (to continue exactly) and, once finished, its kept head.

One file (``RunDir.cluster_stage``), a dict of plain data and tensors,
written atomically and read with ``torch.load(weights_only=True)``:

- ``settings`` (the stage section), ``clusters`` (K'), ``seed``,
  ``epoch`` (the run's epoch whose features it was fitted on), ``images``;
- ``progress``: ``ClusterStage.state_dict()``, saved on a stop and at the end;
- ``head``: ``StageHead.saved()`` once finished, else None;
- ``choice``: the K curve when K was chosen (``{"criterion", "scores", "chosen"}``), else None;
- ``head_losses``, ``kept_head``: the selection, once finished.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from clusterclr.errors import UserError
from clusterclr.io import atomic_write

FORMAT = 1


def write_stage(path: Path, record: dict[str, Any]) -> Path:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **record}, buffer)
    return atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def read_stage(path: Path) -> dict[str, Any] | None:
    """The record at ``path``, or None when there is none."""
    if not path.is_file():
        return None
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or truncated files
        reason = " ".join(str(err).split())[:150]
        raise UserError(f"cannot read the clustering stage {path}: {reason}; delete it to fit the stage again") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise UserError(f"{path} is not a clustering stage this clusterclr reads; delete it to fit the stage again")
    return record
