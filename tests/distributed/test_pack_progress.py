"""Progress inside a pack reaches the sweep driver: throttled forwarding on the worker, the
driver's heartbeat line, and `run_pack`'s wiring (in process, no Ray: a fake board)."""

from __future__ import annotations

import logging
from dataclasses import asdict

from ipt_dist.sweep.progress import (
    PackProgressBoard,
    ThrottledProgress,
    describe_packs,
    pack_eta,
    partial_jobs,
)


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_forwarding_is_throttled_but_keeps_the_first_and_last_step():
    clock, sent = FakeClock(), []
    fwd = ThrottledProgress(lambda *a: sent.append(a), every_s=10.0, clock=clock)
    for step in range(1, 101):
        clock.t += 1.0  # one second per step
        fwd(step, 100)
    # step 1, then every 10 s, and step 100: not every step
    assert [s[0] for s in sent] == [1, 11, 21, 31, 41, 51, 61, 71, 81, 91, 100]
    assert sent[-1] == (100, 100, 100.0) and sent[0] == (1, 100, 1.0)


def test_a_failing_send_never_fails_the_pack():
    def broken(*_):
        raise RuntimeError("board gone")

    ThrottledProgress(broken)(1, 10)  # no exception


def test_board_keeps_the_latest_state_per_pack_and_the_driver_describes_it():
    board = PackProgressBoard()
    board.update(1, 10, 1000, 20.0)
    board.update(1, 100, 1000, 200.0)  # 2 s per step: 900 steps left = 30 min
    board.update(2, 500, 1000, 100.0)
    snap = board.snapshot()
    assert snap[1] == (100, 1000, 200.0)
    assert pack_eta(100, 1000, 200.0) == "30m00s" and pack_eta(0, 1000, 0.0) == "?"
    text = describe_packs(snap, {1: "pt x22", 2: "ist x8", 3: "pt x4"})
    assert text == "pack 1 (pt x22): 100/1000 steps, ETA 30m00s; pack 2 (ist x8): 500/1000 steps, ETA 1m40s"
    assert describe_packs(snap, {}) == ""  # packs of another fan-out are not shown
    assert partial_jobs(snap, {1: 22, 2: 8}) == 22 * 0.1 + 8 * 0.5


def test_heartbeat_line_has_the_steps_of_running_packs_and_an_eta_before_any_pack_ends(caplog):
    from ipt_dist.sweep.progress import SweepProgress

    progress = SweepProgress("pt", total=44, skipped=0)
    progress.t0 -= 120  # two minutes in, no pack finished
    with caplog.at_level(logging.INFO, logger="ipt_dist.sweep.progress"):
        progress.report(2)
        progress.report(2, partial=11.0, packs="pack 1 (pt x22): 500/1000 steps, ETA 2m00s")
    first, second = [r.getMessage() for r in caplog.records]
    assert first.endswith("ETA ?")  # what a long pack showed before
    # 11 of 44 jobs' worth of steps in 2 min: 33 left -> 6 min
    assert "0/44 jobs done" in second and "ETA 6m00s | pack 1 (pt x22): 500/1000 steps, ETA 2m00s" in second


class FakeActorMethod:
    def __init__(self, calls: list) -> None:
        self.calls = calls

    def remote(self, *args):
        self.calls.append(args)


class FakeBoard:
    """Stands in for the board's actor handle: `board.update.remote(...)` records the call."""

    def __init__(self) -> None:
        self.calls: list = []
        self.update = FakeActorMethod(self.calls)


def test_run_pack_forwards_the_steps_of_its_pack(tmp_path, demo_dir):
    """The worker side of the path: `run_pack` hands train_pack a forwarder that sends
    (pack id, done, total, seconds) to the board it was given."""
    from ipt_dist.config import config_to_dict, load_config
    from ipt_dist.sweep.plan import plan_sweep
    from ipt_dist.sweep.worker import run_pack
    from tests.conftest import tiny_overrides

    cfg = load_config(None, tiny_overrides(tmp_path / "run", demo_dir) + [
        "data.tasks=[demo_sentiment]", "data.unseen_tasks=[]", "sweep.data_seeds=[42]", "sweep.lrs=[0.3]",
        "data.data_seed=42", "pt.steps=4", "pt.eval_every=4"])
    plan = plan_sweep(cfg, "pt")
    board = FakeBoard()
    outs = run_pack(config_to_dict(plan.cfg), [asdict(j) for j in plan.jobs], progress=(board, 7))
    assert len(outs) == 1
    assert [c[:3] for c in board.calls] == [(7, 1, 4), (7, 4, 4)]  # first and last step (4 steps < 10 s)
    assert all(c[3] >= 0 for c in board.calls)


def test_msf_heartbeat_logs_rank0_steps_while_training_runs(tmp_path, caplog):
    """Distributed MSF's driver blocks in trainer.fit() with worker output off the console: a
    heartbeat reads rank 0's history.jsonl and logs the step, the loss and an ETA."""
    import json
    import re
    import time

    from ipt_dist.distributed.msf_driver import _heartbeat

    history = tmp_path / "history.jsonl"
    with caplog.at_level(logging.INFO, logger="ipt_dist.distributed.msf_driver"), \
            _heartbeat(history, 100, "distributed MSF d=2", every_s=0.05):
        time.sleep(0.2)  # nothing written yet: no line
        for step in (10, 20):
            with open(history, "a") as f:
                f.write(json.dumps({"step": step, "loss": 1.5}) + "\n")
            time.sleep(0.3)
    lines = [r.getMessage() for r in caplog.records]
    assert lines and all(ln.startswith("distributed MSF d=2: step ") for ln in lines)
    assert "step 10/100, loss 1.5, ETA ?" in lines[0]
    assert any(re.fullmatch(r"distributed MSF d=2: step 20/100, loss 1.5, ETA \d+m\d\ds", ln) for ln in lines), lines
