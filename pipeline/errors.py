"""One kind of error a person can act on.

Every entry point catches `UserError` and prints its message as a single line (exit status 2),
without a traceback unless `PIPELINE_DEBUG=1`. Raise it for anything the user can fix: a bad
config value, a missing file, a table without the needed columns. The message names the problem
*and* the fix, e.g. "fit.bootstrap=-3 must be >= 0: pass fit.bootstrap=0 to skip the bootstrap".
"""

from __future__ import annotations


class UserError(Exception):
    """A problem in the user's input, with a one-line message that says what to change."""

    def __init__(self, message: str):
        if "\n" in message:
            raise ValueError("UserError messages must fit on one line")
        super().__init__(message)
