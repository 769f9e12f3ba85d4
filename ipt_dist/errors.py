"""User errors and how every entry point shows them: one `error:` line, exit 2, no traceback.

    from ipt_dist.errors import run_entry
    sys.exit(run_entry(lambda: main(args), debug=args.debug))

Every exception the project raises for a user's mistake (a config field, a data file, an
artifact, a backbone name, a DeepSpeed config) derives from `UserError`, so one `except` in
`run_entry` turns all of them into `error: <what, where, the fix>` on stderr and exit status 2.
A missing file the user named (`FileNotFoundError`) is treated the same way. Ctrl-C (or
`ray job stop`'s SIGTERM, turned into KeyboardInterrupt by the sweeps) prints that finished work
is kept and exits 130. `--debug` or `IPT_DEBUG=1` shows the traceback instead. Pure Python:
entry points of every layer use it.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

__all__ = ["DEBUG_ENV", "EXIT_INTERRUPTED", "EXIT_USER_ERROR", "StageFailed", "UserError", "debug_requested", "one_line",
           "run_entry"]

DEBUG_ENV = "IPT_DEBUG"
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class UserError(ValueError):
    """A problem the user can fix; the message names what and where, and the fix."""


class StageFailed(RuntimeError):
    """A stage ran and some of its jobs failed, so the next stage must not start (exit 1); the
    message says where the failures are recorded and that re-running retries only them."""


def debug_requested(argv: list[str] | None = None) -> bool:
    """`--debug` on the command line or IPT_DEBUG set to anything but '', '0', 'false'."""
    if argv is not None and "--debug" in argv:
        return True
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def one_line(message: str) -> str:
    """A multi-line problem list ("invalid config:\\n  - a\\n  - b") as one line ("invalid config: a; b")."""
    parts = [ln.strip() for ln in str(message).splitlines() if ln.strip()]
    parts = [p[2:].strip() if p.startswith("- ") else p for p in parts]
    if not parts:
        return "unknown error"
    head, rest = parts[0], parts[1:]
    if not rest:
        return head
    return f"{head.rstrip(':')}: " + "; ".join(rest)


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (its type's name when it has none), cut at `limit`."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]


def run_entry(fn: Callable[[], int], *, debug: bool = False,
              interrupted: str = "interrupted: finished work is kept on disk; run the same command again to "
                                 "resume") -> int:
    """Run an entry point's body; user errors -> one line + exit 2, Ctrl-C -> exit 130.

    Anything else is a bug or an infrastructure failure and keeps its traceback.
    """
    try:
        return fn()
    except (UserError, FileNotFoundError) as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_USER_ERROR
    except StageFailed as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(interrupted, file=sys.stderr)
        return EXIT_INTERRUPTED
