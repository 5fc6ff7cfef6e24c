"""The `lpdet` command line.

Each subcommand parses its options (`lpdet.cli.parsers`), calls one library function, and prints
the result. User-fixable problems arrive as `LpdetError` and are printed as one line (exit
status 2); a reader that stops reading (``lpdet ... | head``) ends the command quietly.
"""

from __future__ import annotations

import logging
import os
import sys

from lpdet.cli.parsers import build_parser
from lpdet.errors import Interrupted, LpdetError

__all__ = ["main", "build_parser"]

BROKEN_PIPE_STATUS = 141  # 128 + SIGPIPE: what a Unix tool whose reader went away exits with


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()  # a reader that went away shows up here, inside the try, not at exit
    except BrokenPipeError:
        # Stop quietly, as Unix tools do; stdout goes to /dev/null so the exit-time flush is quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE_STATUS


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    args.command_line = list(sys.argv[1:] if argv is None else argv)  # `train --nproc N` starts it N times
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        args.func(args)
    except LpdetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or `Interrupted`: SIGINT/SIGTERM after saving a checkpoint
        what = f"interrupted: {e}" if isinstance(e, Interrupted) else "interrupted"
        print(what + (f"; {hint}" if (hint := _resume_hint(args)) else ""), file=sys.stderr)
        return e.exit_status if isinstance(e, Interrupted) else 130
    return 0


def _resume_hint(args) -> str:
    """How to continue an interrupted command."""
    if args.command == "search":
        return "run the same command again: the supernet and finished trials are kept, the interrupted trial runs again"
    if args.command in ("design", "sweep"):
        return "run the same command again: finished trials are reused and an unfinished training resumes"
    if args.command == "train":
        return f"continue with `lpdet train --resume {getattr(args, 'resume', None) or args.out}`"
    return ""
