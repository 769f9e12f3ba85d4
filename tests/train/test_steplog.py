"""Per-step metrics stay on the device and are read at flushes (ipt_dist.train.steplog, issue 18):
the values read are the ones computed, a collective runs once per flush over all pending steps, and
the single-process MSF loop writes every step's row, in batches of msf.log_every, with the same
numbers as reading every step."""

import math
from dataclasses import replace

import pytest
import torch

from ipt_dist.artifacts import read_jsonl
from ipt_dist.data.selection import load_tokenized
from ipt_dist.modeling.backbone import build_backbone
from ipt_dist.stages.msf import train_msf
from ipt_dist.train.steplog import StepLog


def test_flush_reads_every_pending_step_in_order_and_empties_the_log():
    log = StepLog()
    for step in (1, 2, 3):
        log.add(step, {"loss": torch.tensor(step * 0.5), "tokens": float(10 * step), "norm": None},
                {"lr": 0.1 * step})
    assert len(log) == 3
    rows = log.flush()
    assert [r.step for r in rows] == [1, 2, 3]
    assert [r.values["loss"] for r in rows] == [0.5, 1.0, 1.5]
    assert [r.values["tokens"] for r in rows] == [10.0, 20.0, 30.0]
    assert all(math.isnan(r.values["norm"]) for r in rows)
    assert [r.host["lr"] for r in rows] == pytest.approx([0.1, 0.2, 0.3])
    assert len({r.step_time for r in rows}) == 1  # the interval's mean
    assert len(log) == 0 and log.flush() == []


def test_reduce_runs_once_over_the_whole_table():
    log = StepLog()
    log.add(1, {"a": torch.tensor(1.0), "b": 2.0})
    log.add(2, {"a": torch.tensor(3.0), "b": 4.0})
    calls = []

    def double(table):
        calls.append(tuple(table.shape))
        table.mul_(2)

    assert [r.values for r in log.flush(double)] == [{"a": 2.0, "b": 4.0}, {"a": 6.0, "b": 8.0}]
    assert calls == [(2, 2)]


def test_a_column_may_mix_tensors_and_host_numbers():
    log = StepLog()
    log.add(1, {"g": torch.tensor(1.5)})
    log.add(2, {"g": 2.5})
    log.add(3, {"g": None})
    got = [r.values["g"] for r in log.flush()]
    assert got[:2] == [1.5, 2.5] and math.isnan(got[2])


def test_steps_must_log_the_same_metrics():
    log = StepLog()
    log.add(1, {"a": 1.0})
    with pytest.raises(ValueError, match="step 2"):
        log.add(2, {"b": 1.0})


def _msf_history(cfg, tmp_path, name, log_every):
    cfg = replace(cfg, msf=replace(cfg.msf, steps=7, eval_every=7, log_every=log_every))
    tasks = list(cfg.data.tasks)
    bb = build_backbone(cfg.backbone)
    tok = load_tokenized(cfg, bb, tasks)
    torch.manual_seed(0)
    prompts = torch.randn(len(tasks), cfg.pt.prompt_len, bb.hidden_size,
                          generator=torch.Generator().manual_seed(0)) * 0.02
    out = tmp_path / name
    out.mkdir()
    train_msf(cfg, bb, prompts, [tok[t] for t in tasks], tasks, out)
    return read_jsonl(out / "history.jsonl")


def test_single_process_msf_reads_its_metrics_every_log_every_steps(tiny_cfg, tmp_path):
    every = _msf_history(tiny_cfg, tmp_path, "every", 1)
    batched = _msf_history(tiny_cfg, tmp_path, "batched", 3)
    assert [r["step"] for r in batched] == list(range(1, 8))
    # flushed at steps 3, 6 and 7 (the eval step): each flush's rows share the interval's mean step time
    times = [r["step_time"] for r in batched]
    assert times[0] == times[1] == times[2] and times[3] == times[4] == times[5]
    assert len(set(times)) == 3
    # each step is timed from its own start: a tiny-model MSF step (forward + backward + AdamW) takes
    # milliseconds; a clock started after the step (the flush alone) reads ~0.1 ms
    assert min(r["step_time"] for r in every) > 1e-3
    assert min(r["step_time"] for r in batched) > 1e-3
    # the same numbers as reading every step
    for a, b in zip(every, batched, strict=True):
        for k in ("loss", "lm_loss", "rec_loss", "target_tokens", "grad_norm", "lr"):  # lr: the step's own
            assert a[k] == pytest.approx(b[k], rel=1e-6), (a["step"], k)
    assert batched[-1]["dev_mean"] == pytest.approx(every[-1]["dev_mean"])
