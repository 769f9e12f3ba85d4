"""Progress of a sweep: jobs done / total with an ETA on the driver, and the steps of every running
pack, from the workers to the driver's heartbeat.

A long pack (SmolLM2, thousands of steps) must not leave the console silent until it ends:

    worker: train_pack(..., on_progress=ThrottledProgress(send))   # send -> board.update.remote(...)
    board:  PackProgressBoard, one small Ray actor per fan-out (num_cpus=0), latest state per pack
    driver: its 60 s heartbeat reads board.snapshot() and logs "pack 3: 120/1000 steps, ETA 12m30s"

The core (`train/packed.py`) knows nothing of this: it calls an optional callback. Plain Python
here (the driver wraps the board with `ray.remote`), so it is tested without a cluster. Progress
is best effort: a lost update or a dead board only leaves the heartbeat without step counts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["PackProgressBoard", "SweepProgress", "ThrottledProgress", "describe_packs", "fmt_secs", "pack_eta",
           "partial_jobs"]

log = logging.getLogger(__name__)


class PackProgressBoard:
    """Body of the board actor: pack id -> (steps done, total steps, seconds since the pack's first step)."""

    def __init__(self) -> None:
        self.packs: dict[int, tuple[int, int, float]] = {}

    def update(self, pack_id: int, done: int, total: int, seconds: float) -> None:
        self.packs[pack_id] = (done, total, seconds)  # a retried pack starts again from 0: the latest wins

    def snapshot(self) -> dict[int, tuple[int, int, float]]:
        return dict(self.packs)


class ThrottledProgress:
    """`train_pack`'s `on_progress(done, total)` on a worker: forwards (done, total, seconds) through
    `send` on the first step, the last, and otherwise at most once every `every_s` seconds."""

    def __init__(self, send: Callable[[int, int, float], None], every_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.send, self.every_s, self.clock = send, every_s, clock
        self.t0 = clock()  # made right before train_pack: the first step's time counts in the rate
        self.last = -float("inf")

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if done == 1 or done >= total or now - self.last >= self.every_s:
            self.last = now
            try:
                self.send(done, total, now - self.t0)
            except Exception:  # noqa: BLE001, S110 - progress is best effort, never a reason to fail a pack
                pass


def fmt_secs(s: float) -> str:
    s = round(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def pack_eta(done: int, total: int, seconds: float) -> str:
    """Time left of one pack from its measured step rate; '?' before a step has taken time."""
    if done <= 0 or seconds <= 0:
        return "?"
    return fmt_secs(seconds / done * max(0, total - done))


def partial_jobs(running: dict[int, tuple[int, int, float]], sizes: dict[int, int]) -> float:
    """Jobs' worth of work done inside running packs: sum of jobs x (steps done / total)."""
    return sum(sizes[p] * done / total for p, (done, total, _) in running.items() if p in sizes and total > 0)


def describe_packs(running: dict[int, tuple[int, int, float]], labels: dict[int, str], limit: int = 4) -> str:
    """'pack 3 (pt x22): 120/1000 steps, ETA 12m30s; ...' of the running packs that reported (at most
    `limit` listed, slowest first); '' when none has."""
    shown = [(p, v) for p, v in running.items() if p in labels]
    if not shown:
        return ""
    shown.sort(key=lambda pv: pv[1][0] / max(1, pv[1][1]))
    parts = [f"pack {p} ({labels[p]}): {done}/{total} steps, ETA {pack_eta(done, total, secs)}"
             for p, (done, total, secs) in shown[:limit]]
    if len(shown) > limit:
        parts.append(f"+{len(shown) - limit} more")
    return "; ".join(parts)


class SweepProgress:
    """jobs done / total, failures and ETA in the driver log."""

    def __init__(self, stage: str, total: int, skipped: int) -> None:
        self.stage, self.total, self.skipped = stage, total, skipped
        self.done = self.failed = 0
        self.t0 = time.time()

    def report(self, in_flight: int, partial: float = 0.0, packs: str = "") -> None:
        """One progress line. `partial`: jobs' worth of steps done inside running packs (the ETA
        counts them, so it is known before the first pack ends); `packs`: their steps and ETAs."""
        finished = self.skipped + self.done
        elapsed = time.time() - self.t0
        todo = self.total - finished - self.failed
        worked = self.done + partial
        eta = fmt_secs(elapsed / worked * max(0.0, todo - partial)) if worked > 0 else "?"
        log.info("%s sweep: %d/%d jobs done (%d this run, %d skipped), %d failed, %d packs running, "
                 "elapsed %s, ETA %s%s", self.stage, finished, self.total, self.done, self.skipped, self.failed,
                 in_flight, fmt_secs(elapsed), eta, f" | {packs}" if packs else "")
