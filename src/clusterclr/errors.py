"""Errors a user can act on.

The CLI prints a ``UserError`` as one line and exits non-zero without a
traceback; anything else is a bug and keeps its traceback.
"""

from pathlib import Path


class UserError(Exception):
    """Bad input (config, data, paths): the message says what to fix."""


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
