"""Keep-best bookkeeping of every training loop: which evaluation step is the best so far.

One rule for all loops (`train.packed.train_pack` for PT/IST jobs, the single-process MSF
driver and the distributed MSF worker):

* A step's dev score over several tasks is the mean of their *finite* scores: a task that
  scores NaN (no dev examples, a metric undefined on these predictions) is left out of the
  mean and logged by name. If every task is NaN the mean is NaN.
* A step is the best one when its score is strictly greater than the best so far (ties keep
  the earliest step). A NaN score is never the best, so a run whose every evaluation is NaN
  keeps no checkpoint rather than one chosen by accident.

Before this module the single-process MSF driver averaged NaN in, so one NaN task made every
mean NaN and no checkpoint was ever saved, while the distributed worker left NaN out.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)


def dev_mean(scores: Sequence[float], names: Sequence[str] | None = None) -> float:
    """The mean of the finite scores; NaN ones are left out and logged (NaN when all are NaN)."""
    finite = [s for s in scores if not math.isnan(s)]
    if len(finite) < len(scores):
        bad = [names[i] if names is not None else str(i) for i, s in enumerate(scores) if math.isnan(s)]
        log.warning("dev score NaN for %d of %d task(s), left out of the mean: %s", len(bad), len(scores),
                    ", ".join(bad[:10]) + (" ..." if len(bad) > 10 else ""))
    return sum(finite) / len(finite) if finite else float("nan")


@dataclass
class BestTracker:
    """The best score so far and the step it was reached at (`update` says whether a step is it)."""

    best: float = -math.inf
    step: int = 0

    def update(self, score: float, step: int) -> bool:
        """Record `score` of `step`; True when it is the new best (strictly greater, never NaN)."""
        if math.isnan(score) or not score > self.best:
            return False
        self.best, self.step = float(score), step
        return True
