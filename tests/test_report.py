"""`ipt report` (ipt_dist.report) from a summary alone: the paired relative-performance table,
its bootstrap interval, the rule, and the plots (no Ray, no MLflow)."""

from __future__ import annotations

import json

import pytest

from ipt_dist.report import make_report
from ipt_dist.summary import summarize_ist


def rec(task, role, test, seed, setting, d=4, decoder="msf"):
    return {"job_id": f"{role}-{task}-{setting}-{d}-{decoder}-{seed}", "task": task, "role": role, "lr": 0.1,
            "data_seed": seed, "setting": setting, "d": d, "decoder": decoder, "best_dev": 0.5, "test": test,
            "metric": "ACC"}


def write_run(tmp_path, n_tasks: int = 4):
    """A run directory holding only ist_sweep/summary.json: settings 4 (draw 13) and 5 (draws 42, 13)
    at d=2 and d=8; PT on both draws."""
    pt, ist = [], []
    for i in range(n_tasks):
        t = f"t{i}"
        setting = "ist_seen_new" if i % 2 == 0 else "ist_unseen"
        for seed, p in ((42, 0.8), (13, 0.4 + 0.05 * i)):
            pt.append(rec(t, "pt", p, seed, None))
            for d, frac in ((2, 0.6), (8, 0.9)):
                if setting == "ist_seen_new" and seed == 42:  # setting 4: new data only
                    continue
                ist.append(rec(t, "ist", p * (frac + 0.02 * i), seed, setting, d=d))
    summary = summarize_ist(ist, pt, seen=[f"t{i}" for i in range(0, n_tasks, 2)],
                            unseen=[f"t{i}" for i in range(1, n_tasks, 2)])
    (tmp_path / "ist_sweep").mkdir()
    (tmp_path / "ist_sweep" / "summary.json").write_text(json.dumps(summary.to_dict()))
    return summary


def test_report_shows_paired_relative_performance_with_its_interval_and_rule(tmp_path):
    summary = write_run(tmp_path)
    report = make_report(tmp_path).read_text()
    assert "| mean relative | 95% CI | ratio of means |" in report
    row = next(s for s in summary.settings if s["column"] == "ist_unseen@d8")
    lo, hi = row["mean_relative_ci_low"], row["mean_relative_ci_high"]
    assert lo < row["mean_relative"] < hi and f"[{lo:.3f}, {hi:.3f}]" in report
    assert "paired per few-shot draw" in report and "bootstrap" in report  # the rule, from the notes
    # Per task: each column's own PT denominator (the mean over its draws) and its ratio.
    t1 = summary.row("t1")
    assert t1["ist_unseen@d8/pt"] is not None
    assert (f"| {t1['ist_unseen@d8']:.3f} | {t1['ist_unseen@d8/pt']:.3f} | {t1['ist_unseen@d8/ratio']:.3f} |"
            in report)
    t0 = summary.row("t0")  # setting 4 is divided by PT on draw 13 alone, not by PT over both draws
    assert t0["ist_seen_new@d8/pt"] == pytest.approx(0.4) and t0["pt"] == pytest.approx(0.6)
    assert f"| t0 | seen | ACC | 0.600 | {t0['ist_seen_new@d8']:.3f} | 0.400 | 0.900 |" in report
    for name in ("relative_performance.png", "ist_vs_pt.png"):
        assert (tmp_path / "report" / name).read_bytes().startswith(b"\x89PNG")


def test_one_task_per_setting_gives_no_interval_and_still_plots(tmp_path):
    summary = write_run(tmp_path, n_tasks=2)
    assert all(s["mean_relative_ci_low"] is None for s in summary.settings)
    report = make_report(tmp_path).read_text()
    assert "[" not in report.split("## Relative performance")[1].split("\n\n")[1]  # a blank CI cell
    assert (tmp_path / "report" / "relative_performance.png").is_file()


def test_a_summary_written_before_pairing_is_labelled_unpaired(tmp_path):
    summary = write_run(tmp_path).to_dict()
    summary["columns"] = [c for c in summary["columns"] if not c.endswith("/pt")]  # as written before pairing
    (tmp_path / "ist_sweep" / "summary.json").write_text(json.dumps(summary))
    text = make_report(tmp_path).read_text()
    assert "IST / PT averaged over draws: this summary predates pairing" in text
    assert "IST / PT on the same draw" not in text


def test_tasks_without_a_ratio_are_counted_apart_in_the_table(tmp_path):
    """`mean score` covers every task, `mean PT` and the ratios only those with a PT denominator: the
    tasks cell says how many of them have a ratio."""
    pt = [rec("a", "pt", 0.8, 42, None), rec("b", "pt", 0.0, 42, None), rec("c", "pt", 0.5, 42, None)]
    ist = [rec(t, "ist", 0.4, 42, "ist_unseen") for t in ("a", "b", "c")]
    summary = summarize_ist(ist, pt, unseen=["a", "b", "c"])
    (tmp_path / "ist_sweep").mkdir()
    (tmp_path / "ist_sweep" / "summary.json").write_text(json.dumps(summary.to_dict()))
    report = make_report(tmp_path).read_text()
    assert "| msf | 3 (2 with a ratio) | 0.400 | 0.650 | 0.650 |" in report
