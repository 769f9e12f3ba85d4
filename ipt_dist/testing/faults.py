"""Fault injection for tests: processes that die for real (`os._exit(1)`, as on an OOM kill or a
lost node) at a chosen point, once.

Production code calls one function per hook; each does nothing unless a test asked for the fault.
No ray or deepspeed here: what must happen before dying (e.g. waiting for a checkpoint to be
committed) is passed in by the caller.

- Sweeps: `IPT_SWEEP_TEST_CRASH_ONCE="<job id or task>:<marker file>"` in the sweep driver's
  environment makes the first pack holding that job kill its worker process on its first attempt,
  so Ray's retries are tested with real workers. The driver reads the request once
  (`sweep_crash_request`) and hands it to every pack; the worker calls `maybe_crash` before any work.
- Distributed MSF: `crash_at_step` makes the last rank die before that step, once per run
  (`maybe_crash_msf_worker`).
- Single-process MSF: `IPT_MSF_TEST_CRASH_AT_STEP=<n>` in the environment of `ipt msf` makes the
  process die right after training step n (`maybe_crash_msf`); a re-run without it resumes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["MSF_CRASH_ENV", "MSF_CRASH_MARKER", "SWEEP_CRASH_ENV", "maybe_crash", "maybe_crash_msf",
           "maybe_crash_msf_worker", "sweep_crash_request"]

log = logging.getLogger(__name__)

SWEEP_CRASH_ENV = "IPT_SWEEP_TEST_CRASH_ONCE"
MSF_CRASH_ENV = "IPT_MSF_TEST_CRASH_AT_STEP"
MSF_CRASH_MARKER = "crash_injected"  # written to the run dir by the worker that died (tests look for it)


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


def maybe_crash_msf_worker(crash_at_step: int | None, next_step: int, rank: int, world: int, run_dir: str | Path,
                           before_exit: Callable[[], None] | None = None) -> None:
    """Distributed MSF (`crash_at_step`): the last rank exits hard (`os._exit(1)`) before training
    step `crash_at_step`, once per run: `<run_dir>/crash_injected` records that it happened.

    `before_exit` runs first (the worker waits there until its latest checkpoint is committed, so
    the test exercises "resume from that checkpoint").
    """
    if crash_at_step is None or next_step != crash_at_step or rank != world - 1:
        return
    marker = Path(run_dir) / MSF_CRASH_MARKER
    if marker.exists():
        return
    if before_exit is not None:
        before_exit()
    marker.write_text(str(crash_at_step))
    log.warning("rank %d: injected crash before step %d", rank, crash_at_step)
    os._exit(1)


def maybe_crash_msf(done: int) -> None:
    """Single-process MSF: exit this process hard (`os._exit(1)`) after training step `done` when
    `IPT_MSF_TEST_CRASH_AT_STEP` names it (a test's killed `ipt msf`; never set otherwise)."""
    if os.environ.get(MSF_CRASH_ENV) == str(done):
        log.warning("injected crash after MSF step %d", done)
        os._exit(1)
