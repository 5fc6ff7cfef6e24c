"""The one exception type users see.

Anything the user can fix (a wrong path, a malformed annotation file, a bad option) is
raised as `LpdetError` with a one-line message that names the file or option and says
how to fix it. The CLI prints it as ``error: <message>`` and exits with status 2, with no
traceback. Everything else is a bug and keeps its traceback.
"""


class LpdetError(Exception):
    """A user-facing error: the message names what is wrong and how to fix it."""
