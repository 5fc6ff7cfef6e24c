"""The one exception type users see.

Anything the user can fix (a wrong path, a malformed annotation file, a bad option) is
raised as `LpdetError` with a one-line message that names the file or option and says
how to fix it. The CLI prints it as ``error: <message>`` and exits with status 2, with no
traceback. Everything else is a bug and keeps its traceback.
"""


class LpdetError(Exception):
    """A user-facing error: the message names what is wrong and how to fix it."""


def raise_first_failed(checks, prefix: str = "") -> None:
    """`checks`: (ok, message) pairs, e.g. a config's option rules; `LpdetError(prefix + message)` for
    the first that is not ok."""
    for ok, message in checks:
        if not ok:
            raise LpdetError(prefix + message)


class Interrupted(KeyboardInterrupt):
    """A command stopped by SIGINT/SIGTERM after saving what it needs to continue.

    A `KeyboardInterrupt`, so code that cleans up on Ctrl-C does so here too; the CLI exits with
    `exit_status` (128 + the signal number, as a shell reports a process ended by that signal)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_status = 128 + signum
