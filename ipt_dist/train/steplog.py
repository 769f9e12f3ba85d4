"""Per-step training metrics kept where they were computed and read in one go.

Reading a loss with `float(t)` or `.tolist()` waits for the device to finish the step, so a read
per step stalls the queue of work every step. `StepLog` holds each step's metric tensors as they
are and reads all pending steps at a flush (the caller flushes at its log / eval / checkpoint
steps): one stack into a (steps, metrics) table, an optional in-place collective over it (the
distributed MSF worker's one all-reduce per flush), and one host copy.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = ["FlushedStep", "StepLog"]


@dataclass
class FlushedStep:
    step: int
    values: dict[str, float]  # the step's metrics, read from the device (after `reduce`, if any)
    host: dict  # what the caller passed as host values (e.g. the lr), unchanged
    step_time: float  # wall seconds per step, the mean over the flushed interval


@dataclass
class StepLog:
    """Pending steps: `add` each step's metrics (0-d tensors, or Python numbers where they are
    host-side), `flush` them all. Every step must add the same metric names in the same order."""

    _steps: list[int] = field(default_factory=list)
    _values: list[list[torch.Tensor | float | None]] = field(default_factory=list)
    _host: list[dict] = field(default_factory=list)
    _names: tuple[str, ...] = ()
    _started: float | None = None

    def __len__(self) -> int:
        return len(self._steps)

    def add(self, step: int, values: dict[str, torch.Tensor | float | None], host: dict | None = None,
            started: float | None = None) -> None:
        """Record one step. `started`: its perf_counter() start (the interval's start, for the
        first pending step); None takes now. A None value is read back as NaN."""
        names = tuple(values)
        if self._steps and names != self._names:
            raise ValueError(f"StepLog: step {step} logs {names}, earlier steps {self._names}")
        if not self._steps:
            self._names = names
            self._started = time.perf_counter() if started is None else started
        self._steps.append(step)
        self._values.append([v.detach() if torch.is_tensor(v) else v for v in values.values()])
        self._host.append(dict(host or {}))

    def flush(self, reduce: Callable[[torch.Tensor], None] | None = None) -> list[FlushedStep]:
        """Every pending step's metrics, in order; empties the log. `reduce(table)` (optional) is
        applied in place to the (steps, metrics) float64 table on the device before the one read."""
        if not self._steps:
            return []
        table = self._table()
        if reduce is not None:
            reduce(table)
        rows = table.tolist()  # the one host read
        n = len(self._steps)
        step_time = (time.perf_counter() - self._started) / n
        out = [FlushedStep(s, dict(zip(self._names, r, strict=True)), h, step_time)
               for s, r, h in zip(self._steps, rows, self._host, strict=True)]
        self._steps, self._values, self._host, self._started = [], [], [], None
        return out

    def _table(self) -> torch.Tensor:
        device = next((v.device for row in self._values for v in row if torch.is_tensor(v)), torch.device("cpu"))
        cols = []
        def host(v: float | None) -> float:
            return math.nan if v is None else float(v)

        for j in range(len(self._names)):
            col = [row[j] for row in self._values]
            if not any(torch.is_tensor(v) for v in col):  # host numbers: one copy to the device
                cols.append(torch.tensor([host(v) for v in col], dtype=torch.float64).to(device))
            else:  # device tensors (a host number among them, e.g. a float grad norm, goes over alone)
                cols.append(torch.stack([v.reshape(()).to(device, torch.float64) if torch.is_tensor(v)
                                         else torch.tensor(host(v), dtype=torch.float64, device=device)
                                         for v in col]))
        return torch.stack(cols, dim=1).contiguous()
