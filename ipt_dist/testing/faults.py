"""Fault injection for tests: processes that die for real at a chosen point, once.

Production code calls one function per hook; it does nothing unless a test asked for the fault.
No ray or deepspeed here: what must happen before dying (e.g. waiting for a checkpoint to be
committed) is passed in by the caller.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

MSF_CRASH_MARKER = "crash_injected"  # written to the run dir by the worker that died (tests look for it)


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
