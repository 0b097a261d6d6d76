"""Errors a user can act on.

The CLI prints a ``UserError`` as one line and exits non-zero without a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
from pathlib import Path

from clusterclr.pathtext import path_text


class UserError(Exception):
    """Bad input (config, data, paths): the message says what to fix."""


class OutputError(UserError):
    """Training finished and its checkpoint is written, but an output of the run could not be.

    The message names the output and why. ``run_dir`` holds the finished
    run: resuming it (``train --resume`` or ``cluster --resume``; from Python
    ``clusterclr.resume`` or ``clusterclr.finish_cluster``), which trains no
    further on a finished run, writes every output again, so nothing at the
    end of a run can throw the training away. The command line adds which
    command that is.
    """

    def __init__(self, message: str, run_dir: os.PathLike[str]) -> None:
        super().__init__(f"{message}; the trained model is kept in {path_text(run_dir)}")
        self.run_dir = run_dir

    @classmethod
    def of(cls, err: Exception, output: str | os.PathLike[str], run_dir: os.PathLike[str]) -> OutputError:
        """``err``, raised while writing ``output``: a ``UserError`` names the output itself; anything else is named here."""
        reason = str(err) if isinstance(err, UserError) else f"cannot write {path_text(output)}: {type(err).__name__}: {err}"
        return cls(reason, run_dir)


class Interrupted(Exception):
    """Training stopped on a signal after writing a checkpoint in ``run_dir``.

    The command that was running says how to continue (``train --resume``
    or ``cluster --resume``), so the message stops at what happened.
    """

    def __init__(self, message: str, signal_number: int, run_dir: Path) -> None:
        super().__init__(message)
        self.run_dir = run_dir
        # The shell's convention for "ended by signal N": 130 for SIGINT, 143 for SIGTERM.
        self.exit_status = 128 + signal_number
