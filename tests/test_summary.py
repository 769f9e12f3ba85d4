"""Sweep summaries (ipt_dist.summary): lr selection, relative performance, tables. Pure Python."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from ipt_dist.summary import (
    bootstrap_mean_ci,
    column_name,
    mean_std,
    pt_scores_by_draw,
    select_best_lr,
    summarize_ist,
    summarize_pt,
)


def rec(task, role, test, dev=None, lr=0.1, seed=42, setting=None, d=4, decoder="msf", job_id=None, **kw):
    return {"job_id": job_id or f"{role}-{task}-{setting}-{decoder}-{lr}-{seed}", "task": task, "role": role,
            "lr": lr, "data_seed": seed, "setting": setting, "d": d, "decoder": decoder, "best_dev": dev,
            "test": test, "metric": "ACC", **kw}


def test_best_lr_is_chosen_by_mean_dev_over_seeds_and_scored_by_mean_test():
    rs = [rec("a", "ist", test=0.3, dev=0.2, lr=0.1, seed=13),
          rec("a", "ist", test=0.5, dev=0.4, lr=0.1, seed=21),
          rec("a", "ist", test=0.1, dev=0.6, lr=0.3, seed=13),
          rec("a", "ist", test=0.2, dev=0.6, lr=0.3, seed=21)]
    s = select_best_lr(rs)
    # lr 0.3 wins on dev (0.6 > 0.3) although its test is worse: test never picks the lr.
    assert s.lr == 0.3 and s.dev == pytest.approx(0.6)
    assert s.test == pytest.approx(0.15) and s.test_std == pytest.approx(0.05) and s.n_seeds == 2
    assert s.job_ids == sorted(r["job_id"] for r in rs[2:])


def test_best_lr_ties_go_to_the_smaller_lr_and_missing_dev_never_wins():
    tie = [rec("a", "ist", test=0.9, dev=0.5, lr=0.3), rec("a", "ist", test=0.1, dev=0.5, lr=0.1)]
    assert select_best_lr(tie).lr == 0.1
    nodev = [rec("a", "ist", test=0.9, dev=None, lr=0.3), rec("a", "ist", test=0.1, dev=0.0, lr=0.1)]
    assert select_best_lr(nodev).lr == 0.1


def test_mean_std_ignores_missing_values():
    assert mean_std([1.0, None, 3.0, float("nan")]) == (2.0, 1.0, 2)
    assert mean_std([]) == (None, None, 0)


def test_baseline_decoder_columns_flow_through_beside_msf():
    """Any IST decoder besides MSF's gets its own suffixed columns, ratios and aggregate row, after MSF's."""
    assert column_name("ist_unseen", 8, "pca") == "ist_unseen@d8:pca"
    assert column_name("ist_unseen", 8, "msf") == column_name("ist_unseen", 8, None) == "ist_unseen@d8"
    pt = [rec("A", "pt", test=0.8, dev=0.8), rec("C", "pt", test=0.5, dev=0.5)]
    ist = [rec("A", "ist", test=0.4, dev=0.4, setting="ist_seen_new", decoder=dec)
           for dec in ("random", "pca", "msf")]
    ist += [rec("C", "ist", test=t, dev=t, setting="ist_unseen", decoder=dec)
            for dec, t in (("pca", 0.25), ("msf", 0.3), ("random", 0.05))]
    s = summarize_ist(ist, pt, seen=["A"], unseen=["C"])
    a, c = s.rows
    assert a["ist_seen_new@d4:pca/ratio"] == pytest.approx(0.5)
    assert c["ist_unseen@d4:pca/ratio"] == pytest.approx(0.5)
    assert c["ist_unseen@d4:random/ratio"] == pytest.approx(0.1)
    agg = {r["column"]: r for r in s.settings}
    pca = agg["ist_unseen@d4:pca"]
    assert pca["decoder"] == "pca" and pca["mean_relative"] == pytest.approx(0.5)
    assert [r["column"] for r in s.settings] == ["ist_seen_new@d4", "ist_unseen@d4", "ist_seen_new@d4:pca",
                                                 "ist_unseen@d4:pca", "ist_seen_new@d4:random", "ist_unseen@d4:random"]


def paper_like_records():
    # PT of A: lr 0.1 wins on mean dev (0.6 > 0.5); at it, draw 21 scores 0.6 and draw 13 0.8.
    pt = [rec("A", "pt", test=0.6, dev=0.5, lr=0.1, seed=21), rec("A", "pt", test=0.8, dev=0.7, lr=0.1, seed=13),
          rec("A", "pt", test=0.9, dev=0.9, lr=0.3, seed=21), rec("A", "pt", test=0.9, dev=0.1, lr=0.3, seed=13),
          rec("B", "pt", test=0.4, dev=0.4), rec("C", "pt", test=0.0, dev=0.0)]
    ist = [
        rec("A", "ist", test=0.3, dev=0.2, lr=0.1, seed=13, setting="ist_seen_new"),
        rec("A", "ist", test=0.5, dev=0.4, lr=0.1, seed=21, setting="ist_seen_new"),
        rec("A", "ist", test=0.1, dev=0.6, lr=0.3, seed=13, setting="ist_seen_new"),
        rec("A", "ist", test=0.2, dev=0.6, lr=0.3, seed=21, setting="ist_seen_new"),
        rec("B", "ist", test=0.2, dev=0.3, setting="ist_seen_new"),
        rec("C", "ist", test=0.3, dev=0.3, setting="ist_unseen"),
        rec("A", "msf_eval", test=0.35, dev=0.3, lr=None, seed=21, setting="msf_seen"),
        rec("A", "ist", test=0.05, dev=0.1, seed=13, setting="ist_seen_new", decoder="random"),
        rec("A", "ipt_pt", test=0.7, dev=0.7, seed=13), rec("A", "ipt_pt", test=0.7, dev=0.7, seed=21),
        rec("A", "pt_control", test=0.5, dev=0.5, seed=13, d=None, decoder=None),
        rec("A", "pt_control", test=0.9, dev=0.5, seed=21, d=None, decoder=None),
    ]
    return pt, ist


def test_ist_summary_rows_paired_ratios_and_both_averages():
    pt, ist = paper_like_records()
    s = summarize_ist(ist, pt, seen=["A", "B"], unseen=["C"])
    assert [r["task"] for r in s.rows] == ["A", "B", "C"]  # one row per task
    a, b, c = s.rows
    assert a["pt"] == pytest.approx(0.7) and a["pt_lr"] == 0.1 and a["pt_std"] == pytest.approx(0.1)
    new = column_name("ist_seen_new", 4)
    assert a[new] == pytest.approx(0.15) and a[f"{new}/lr"] == 0.3
    # Paired: draw 13 0.1 / PT 0.8, draw 21 0.2 / PT 0.6 (not 0.15 / 0.7, PT averaged over draws).
    assert a[f"{new}/ratio"] == pytest.approx((0.1 / 0.8 + 0.2 / 0.6) / 2)
    assert a[f"{new}/pt"] == pytest.approx(0.7)
    assert b[new] == pytest.approx(0.2) and b[f"{new}/ratio"] == pytest.approx(0.5) and b[f"{new}/pt"] == 0.4
    assert c.get(new) is None and c["split"] == "unseen"  # setting 4 is for seen tasks only
    assert c["ist_unseen@d4"] == pytest.approx(0.3) and c["ist_unseen@d4/ratio"] is None  # PT score 0
    # Setting 1 ran on draw 21 only: its denominator is PT on draw 21 (0.6), not the all-draw 0.7.
    assert a["msf_seen@d4/ratio"] == pytest.approx(0.35 / 0.6) and a["msf_seen@d4/pt"] == pytest.approx(0.6)
    assert a["ist_seen_new@d4:random"] == pytest.approx(0.05)
    assert a["ist_seen_new@d4:random/ratio"] == pytest.approx(0.05 / 0.8)
    assert a["ipt_pt@d4"] == pytest.approx(0.7) and a["ipt_pt@d4/std"] == pytest.approx(0.0)
    assert a["ipt_pt@d4/ratio"] == pytest.approx((0.7 / 0.8 + 0.7 / 0.6) / 2)
    assert a["pt_control"] == pytest.approx(0.7) and a["pt_control/std"] == pytest.approx(0.2)
    assert a["pt_control/ratio"] == pytest.approx((0.5 / 0.8 + 0.9 / 0.6) / 2)

    agg = {r["column"]: r for r in s.settings}
    row = agg[new]
    assert row["n_tasks"] == 2 and row["n_relative"] == 2
    assert row["mean_relative"] == pytest.approx(((0.1 / 0.8 + 0.2 / 0.6) / 2 + 0.5) / 2)  # mean of task ratios
    assert row["ratio_of_means"] == pytest.approx(((0.15 + 0.2) / 2) / ((0.7 + 0.4) / 2))  # ratio of means
    assert row["mean_pt"] == pytest.approx((0.7 + 0.4) / 2)
    assert row["mean_relative"] != pytest.approx(row["ratio_of_means"])
    assert row["mean_relative_ci_low"] <= row["mean_relative"] <= row["mean_relative_ci_high"]
    unseen = agg["ist_unseen@d4"]
    assert unseen["n_tasks"] == 1 and unseen["mean_relative"] is None  # no task with a usable PT score
    assert unseen["n_relative"] == 0 and unseen["mean_relative_ci_low"] is None
    # The zero PT score is said, not dropped silently.
    assert any(n.startswith("ist_unseen@d4: no ratio on C@42") and "left out of its averages: C" in n
               for n in s.notes)
    # Settings in the paper's order, the random-decoder baseline after the MSF columns.
    order = [r["column"] for r in s.settings]
    assert order.index("msf_seen@d4") < order.index(new) < order.index("ist_unseen@d4") < \
        order.index("ist_seen_new@d4:random")


def test_summary_tables_markdown_and_csv(tmp_path):
    pt, ist = paper_like_records()
    s = summarize_ist(ist, pt, seen=["A", "B"], unseen=["C"])
    md = s.to_markdown()
    assert "## Per setting" in md and "## Per task" in md and "| A | seen | ACC |" in md
    assert "4 IST, training tasks, new data" in md
    s.write_csv(tmp_path / "s.csv", tmp_path / "settings.csv")
    with open(tmp_path / "s.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["task"] for r in rows] == ["A", "B", "C"]
    assert float(rows[0]["ist_seen_new@d4/ratio"]) == pytest.approx((0.1 / 0.8 + 0.2 / 0.6) / 2)
    assert float(rows[0]["ist_seen_new@d4/pt"]) == pytest.approx(0.7)
    assert rows[2]["ist_seen_new@d4"] == ""  # blank, not "None"
    with open(tmp_path / "settings.csv") as f:
        settings = list(csv.DictReader(f))
    assert {r["column"] for r in settings} >= {"ist_seen_new@d4", "ipt_pt@d4", "pt_control"}
    assert {"mean_relative_ci_low", "mean_relative_ci_high", "n_relative"} <= set(settings[0])
    again = type(s).from_dict(s.to_dict())
    assert again.rows == s.rows and again.to_markdown() == md


def test_pt_summary_best_lr_and_spread():
    pt, _ = paper_like_records()
    s = summarize_pt(pt, seen=["A", "B"], unseen=["C"])
    assert [r["task"] for r in s.rows] == ["A", "B", "C"]
    a = s.row("A")
    assert a["best_lr"] == 0.1 and a["test"] == pytest.approx(0.7) and a["test_std"] == pytest.approx(0.1)
    assert a["n_seeds"] == 2 and s.row("C")["split"] == "unseen"
    with pytest.raises(KeyError, match="no row for task 'Z'"):
        s.row("Z")


def test_tasks_without_records_still_get_a_row_and_missing_pt_is_noted():
    s = summarize_ist([rec("A", "ist", test=0.5, dev=0.5, setting="ist_seen_same")], [], seen=["A", "B"])
    assert [r["task"] for r in s.rows] == ["A", "B"] and s.rows[1].get("ist_seen_same@d4") is None
    assert any("no PT score for A, B" in n for n in s.notes)


# ----------------------------------------------------------------------------- paired per draw


def test_ist_equal_to_pt_on_every_draw_is_exactly_one_in_settings_3_and_4():
    """The issue's reproduction: PT 0.8 on draw 42, 0.4 on draw 13; IST equals PT on each draw.
    Dividing by PT averaged over draws (0.6) gave 1.33 for setting 3 and 0.67 for setting 4."""
    pt = [rec("A", "pt", test=0.8, dev=0.5, seed=42), rec("A", "pt", test=0.4, dev=0.5, seed=13)]
    ist = [rec("A", "ist", test=0.8, dev=0.5, seed=42, setting="ist_seen_same"),
           rec("A", "ist", test=0.4, dev=0.5, seed=13, setting="ist_seen_new")]
    s = summarize_ist(ist, pt, seen=["A"])
    agg = {r["column"]: r for r in s.settings}
    for col in ("ist_seen_same@d4", "ist_seen_new@d4"):
        assert s.row("A")[f"{col}/ratio"] == 1.0
        assert agg[col]["mean_relative"] == 1.0 and agg[col]["ratio_of_means"] == 1.0
    assert s.row("A")["pt"] == pytest.approx(0.6)  # the all-draw PT score is still shown
    assert s.row("A")["ist_seen_same@d4/pt"] == 0.8 and s.row("A")["ist_seen_new@d4/pt"] == 0.4


def test_two_tasks_two_draws_by_hand():
    """Per task the mean of per-draw ratios; mean_relative over tasks; ratio_of_means by hand.
    PT's lr is chosen by mean dev over draws (lr 0.1), and its test is taken per draw at that lr."""
    pt = [rec("A", "pt", test=0.5, dev=0.6, lr=0.1, seed=1), rec("A", "pt", test=0.8, dev=0.6, lr=0.1, seed=2),
          rec("A", "pt", test=0.9, dev=0.5, lr=0.3, seed=1), rec("A", "pt", test=0.9, dev=0.5, lr=0.3, seed=2),
          rec("B", "pt", test=0.2, dev=0.4, lr=0.1, seed=1), rec("B", "pt", test=0.6, dev=0.4, lr=0.1, seed=2)]
    ist = [rec("A", "ist", test=0.4, dev=0.3, lr=0.01, seed=1, setting="ist_unseen"),
           rec("A", "ist", test=0.4, dev=0.3, lr=0.01, seed=2, setting="ist_unseen"),
           rec("A", "ist", test=0.9, dev=0.1, lr=0.02, seed=1, setting="ist_unseen"),  # loses on dev
           rec("A", "ist", test=0.9, dev=0.1, lr=0.02, seed=2, setting="ist_unseen"),
           rec("B", "ist", test=0.3, dev=0.3, lr=0.01, seed=1, setting="ist_unseen"),
           rec("B", "ist", test=0.3, dev=0.3, lr=0.01, seed=2, setting="ist_unseen")]
    assert pt_scores_by_draw(pt) == {("A", 1): 0.5, ("A", 2): 0.8, ("B", 1): 0.2, ("B", 2): 0.6}
    s = summarize_ist(ist, pt, unseen=["A", "B"])
    col = "ist_unseen@d4"
    a, b = s.row("A"), s.row("B")
    assert a[col] == pytest.approx(0.4) and a[f"{col}/lr"] == 0.01
    assert a[f"{col}/ratio"] == pytest.approx((0.4 / 0.5 + 0.4 / 0.8) / 2)  # 0.65
    assert b[f"{col}/ratio"] == pytest.approx((0.3 / 0.2 + 0.3 / 0.6) / 2)  # 1.0
    assert a[f"{col}/pt"] == pytest.approx(0.65) and b[f"{col}/pt"] == pytest.approx(0.4)
    [row] = s.settings
    assert row["mean_relative"] == pytest.approx((0.65 + 1.0) / 2)
    assert row["ratio_of_means"] == pytest.approx(((0.4 + 0.3) / 2) / ((0.65 + 0.4) / 2))
    assert row["mean_pt"] == pytest.approx((0.65 + 0.4) / 2) and row["n_relative"] == 2
    # Unpaired (score / PT averaged over draws) would have said (0.4/0.65 + 0.3/0.4) / 2.
    assert row["mean_relative"] != pytest.approx((0.4 / 0.65 + 0.3 / 0.4) / 2)


def test_a_draw_with_pt_zero_has_no_ratio_and_is_noted():
    pt = [rec("A", "pt", test=0.0, dev=0.5, seed=1), rec("A", "pt", test=0.5, dev=0.5, seed=2),
          rec("B", "pt", test=0.5, dev=0.5, seed=1)]
    ist = [rec("A", "ist", test=0.3, dev=0.5, seed=1, setting="ist_unseen"),
           rec("A", "ist", test=0.4, dev=0.5, seed=2, setting="ist_unseen"),
           rec("B", "ist", test=0.25, dev=0.5, seed=1, setting="ist_unseen")]
    s = summarize_ist(ist, pt, unseen=["A", "B"])
    col = "ist_unseen@d4"
    assert s.row("A")[f"{col}/ratio"] == pytest.approx(0.8) and s.row("A")[f"{col}/pt"] == pytest.approx(0.5)
    assert s.row("A")[col] == pytest.approx(0.35)  # the score still counts both draws
    assert any(n == f"{col}: no ratio on A@1 (PT test <= 0 or missing on that draw)" for n in s.notes), s.notes
    [row] = s.settings
    assert row["n_relative"] == 2 and row["mean_relative"] == pytest.approx((0.8 + 0.5) / 2)
    assert row["ratio_of_means"] == pytest.approx(((0.4 + 0.25) / 2) / ((0.5 + 0.5) / 2))  # paired draws only


def test_a_draw_with_negative_pt_has_no_ratio():
    """Matthews correlation can be negative: -0.10 / -0.05 = 2.0 would read as 200% of PT."""
    pt = [rec("A", "pt", test=-0.05, dev=0.1, seed=1), rec("B", "pt", test=0.5, dev=0.5, seed=1)]
    ist = [rec("A", "ist", test=-0.10, dev=0.1, seed=1, setting="ist_unseen"),
           rec("B", "ist", test=0.25, dev=0.5, seed=1, setting="ist_unseen")]
    s = summarize_ist(ist, pt, unseen=["A", "B"])
    col = "ist_unseen@d4"
    assert s.row("A")[f"{col}/ratio"] is None
    assert f"{col}: no ratio on A@1 (PT test <= 0 or missing on that draw); left out of its averages: A" in s.notes
    [row] = s.settings
    assert row["n_relative"] == 1 and row["mean_relative"] == pytest.approx(0.5)


def ratio_records(ratios: list[float]) -> tuple[list[dict], list[dict]]:
    """One task per ratio: PT 0.5 on draw 42, IST 0.5 * ratio on the same draw."""
    pt = [rec(f"t{i}", "pt", test=0.5, dev=0.5) for i in range(len(ratios))]
    ist = [rec(f"t{i}", "ist", test=0.5 * x, dev=0.5, setting="ist_unseen") for i, x in enumerate(ratios)]
    return pt, ist


def test_bootstrap_interval_contains_the_mean_shrinks_with_more_tasks_and_is_deterministic():
    ratios = [0.5, 0.9, 1.1, 0.7, 1.3]
    few = summarize_ist(*reversed(ratio_records(ratios))).settings[0]
    many = summarize_ist(*reversed(ratio_records(ratios * 4))).settings[0]
    for row in (few, many):
        assert row["mean_relative"] == pytest.approx(0.9)
        assert row["mean_relative_ci_low"] < row["mean_relative"] < row["mean_relative_ci_high"]
    assert few["n_relative"] == 5 and many["n_relative"] == 20
    width = lambda r: r["mean_relative_ci_high"] - r["mean_relative_ci_low"]
    assert width(many) < width(few)
    assert 0.3 < width(many) / width(few) < 0.7  # ~1/sqrt(4): a real bootstrap, not a constant
    again = summarize_ist(*reversed(ratio_records(ratios))).settings[0]
    assert (again["mean_relative_ci_low"], again["mean_relative_ci_high"]) == \
        (few["mean_relative_ci_low"], few["mean_relative_ci_high"])
    # The interval is over tasks: in the range of the task ratios, and the seed is what fixes it.
    assert 0.5 <= few["mean_relative_ci_low"] and few["mean_relative_ci_high"] <= 1.3
    assert bootstrap_mean_ci(ratios) == bootstrap_mean_ci(ratios)
    odd = [0.513, 0.917, 1.171, 0.683, 1.362, 0.774, 1.029]  # off-grid: resampled means rarely tie
    assert bootstrap_mean_ci(odd, seed=1) != bootstrap_mean_ci(odd)


def test_one_task_has_no_interval_not_a_zero_width_one():
    row = summarize_ist(*reversed(ratio_records([0.8]))).settings[0]
    assert row["mean_relative"] == pytest.approx(0.8) and row["n_relative"] == 1
    assert row["mean_relative_ci_low"] is None and row["mean_relative_ci_high"] is None
    assert bootstrap_mean_ci([0.8]) == (None, None) and bootstrap_mean_ci([]) == (None, None)


def test_summary_module_needs_no_torch_ray_or_mlflow():
    blocker = (
        "import sys\n"
        "class B:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'ray', 'mlflow', 'deepspeed', 'transformers'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, B())\n"
        "import ipt_dist.summary\n"
        "print('ok')\n"
    )
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, cwd=root, check=False)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_p_i_is_the_denominators_pt_job_so_a_perfect_reconstruction_scores_one():
    """P_i (ipt_dist.sweep.results.stage0_choice) and PT's denominator on the first draw are the same
    job. Before, P_i was the best dev on the first draw alone (lr 1e-5 here: dev 0.9) while the
    denominator was the best mean dev over draws (lr 1e-4: 0.75 vs 0.65): setting 1 of an exact
    Dec(Enc(P_i)) read 0.85 / 0.70 = 1.21."""
    from ipt_dist.sweep.results import stage0_choice

    pt = [rec("A", "pt", test=0.85, dev=0.9, lr=1e-5, seed=42), rec("A", "pt", test=0.5, dev=0.4, lr=1e-5, seed=13),
          rec("A", "pt", test=0.70, dev=0.8, lr=1e-4, seed=42), rec("A", "pt", test=0.6, dev=0.7, lr=1e-4, seed=13)]
    p_i = stage0_choice(pt, same_seed=42)["A"]
    assert (p_i["lr"], p_i["data_seed"]) == (1e-4, 42)
    exact = [rec("A", "msf_eval", test=p_i["test"], dev=p_i["best_dev"], setting="msf_seen", seed=42)]
    s = summarize_ist(exact, pt, seen=["A"])
    assert s.rows[0]["msf_seen@d4/ratio"] == pytest.approx(1.0)
    # only lrs with a job on the first draw compete; a task with none gets no P_i
    assert stage0_choice([r for r in pt if r["lr"] == 1e-5 or r["data_seed"] == 13], 42)["A"]["lr"] == 1e-5
    assert stage0_choice([r for r in pt if r["data_seed"] == 13], 42) == {}
