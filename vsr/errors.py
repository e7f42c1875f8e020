"""vsr's exceptions: one root, each mapped once to the command line's exit code.

Every error a user can cause or fix is a :class:`VsrError` whose message is one line saying what
was expected and what arrived; :class:`UsageError` marks options that do not fit together (exit 2,
as click's own usage errors).  Anything else reaching the CLI is a bug and shows its traceback.
"""

from __future__ import annotations


class VsrError(Exception):
    """Something the user must fix; the message says what.  The CLI exits with ``exit_code``."""

    exit_code = 1


class UsageError(VsrError):
    """Options or arguments that do not fit together (the command line's exit code 2)."""

    exit_code = 2
