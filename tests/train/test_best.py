"""The one keep-best rule of every training loop (ipt_dist.train.best)."""

import logging
import math

from ipt_dist.train.best import BestTracker, dev_mean


def test_a_nan_task_is_left_out_of_the_mean_and_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="ipt_dist.train.best"):
        assert dev_mean([0.5, math.nan, 0.25], ["a", "b", "c"]) == 0.375
    assert "NaN for 1 of 3 task(s)" in caplog.text and ": b" in caplog.text
    assert math.isnan(dev_mean([math.nan, math.nan]))
    assert dev_mean([0.5, 0.25]) == 0.375


def test_best_is_strictly_greater_earliest_wins_ties_and_never_nan():
    best = BestTracker()
    assert not best.update(math.nan, 1)  # an all-NaN step is not the best, even before any other
    assert (best.best, best.step) == (-math.inf, 0)
    assert best.update(0.5, 2) and (best.best, best.step) == (0.5, 2)
    assert not best.update(0.5, 3) and best.step == 2  # a tie keeps the earlier step
    assert not best.update(math.nan, 4) and best.step == 2
    assert not best.update(0.4, 5)
    assert best.update(0.6, 6) and (best.best, best.step) == (0.6, 6)
