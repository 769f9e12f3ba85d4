"""Fault injection for tests: a worker process that dies as on an OOM kill or a lost node.

The sweep's hook: `IPT_SWEEP_TEST_CRASH_ONCE="<job id or task>:<marker file>"` in the sweep
driver's environment makes the first pack holding that job kill its worker process on its first
attempt, so Ray's retries are tested with real workers. The driver reads the request once
(`sweep_crash_request`) and hands it to every pack; the worker calls `maybe_crash` before any work.
Unset (as in every real run), both are no-ops.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

__all__ = ["SWEEP_CRASH_ENV", "maybe_crash", "sweep_crash_request"]

SWEEP_CRASH_ENV = "IPT_SWEEP_TEST_CRASH_ONCE"


def sweep_crash_request() -> str | None:
    """The driver's `IPT_SWEEP_TEST_CRASH_ONCE`, or None (the normal case)."""
    return os.environ.get(SWEEP_CRASH_ENV) or None


def maybe_crash(request: str | None, names: Iterable[str]) -> None:
    """Exit this process hard (`os._exit(1)`) if `request` ("<name>:<marker file>") names one of
    `names` (a pack's job ids and tasks) and its marker file does not exist yet.

    The marker is created with O_EXCL: of the packs running at once exactly one crashes, and only
    on its first attempt (Ray's retry of the same pack finds the marker and runs normally).
    """
    if not request:
        return
    match, marker = request.split(":", 1)
    if match not in set(names):
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, f"crashed pid {os.getpid()}\n".encode())
    os.close(fd)
    os._exit(1)  # a dead worker, as on OOM-kill or a lost node; Ray retries the task
