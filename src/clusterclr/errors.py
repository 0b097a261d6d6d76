"""Errors a user can act on.

The CLI prints a ``UserError`` as one line and exits non-zero without a
traceback; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input (config, data, paths): the message says what to fix."""
