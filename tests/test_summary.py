"""Sweep summaries (ipt_dist.summary): lr selection, relative performance, tables. Pure Python."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from ipt_dist.summary import column_name, mean_std, select_best_lr, summarize_ist, summarize_pt


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
    pt = [rec("A", "pt", test=0.6, dev=0.5, lr=0.1, seed=42), rec("A", "pt", test=0.8, dev=0.7, lr=0.1, seed=13),
          rec("A", "pt", test=0.9, dev=0.9, lr=0.3, seed=42), rec("A", "pt", test=0.9, dev=0.1, lr=0.3, seed=13),
          rec("B", "pt", test=0.4, dev=0.4), rec("C", "pt", test=0.0, dev=0.0)]
    ist = [
        rec("A", "ist", test=0.3, dev=0.2, lr=0.1, seed=13, setting="ist_seen_new"),
        rec("A", "ist", test=0.5, dev=0.4, lr=0.1, seed=21, setting="ist_seen_new"),
        rec("A", "ist", test=0.1, dev=0.6, lr=0.3, seed=13, setting="ist_seen_new"),
        rec("A", "ist", test=0.2, dev=0.6, lr=0.3, seed=21, setting="ist_seen_new"),
        rec("B", "ist", test=0.2, dev=0.3, setting="ist_seen_new"),
        rec("C", "ist", test=0.3, dev=0.3, setting="ist_unseen"),
        rec("A", "msf_eval", test=0.35, dev=0.3, lr=None, setting="msf_seen"),
        rec("A", "ist", test=0.05, dev=0.1, setting="ist_seen_new", decoder="random"),
        rec("A", "ipt_pt", test=0.7, dev=0.7, seed=13), rec("A", "ipt_pt", test=0.7, dev=0.7, seed=21),
        rec("A", "pt_control", test=0.5, dev=0.5, seed=13, d=None, decoder=None),
        rec("A", "pt_control", test=0.9, dev=0.5, seed=21, d=None, decoder=None),
    ]
    return pt, ist


def test_ist_summary_rows_ratios_and_both_averages():
    pt, ist = paper_like_records()
    s = summarize_ist(ist, pt, seen=["A", "B"], unseen=["C"])
    assert [r["task"] for r in s.rows] == ["A", "B", "C"]  # one row per task
    a, b, c = s.rows
    assert a["pt"] == pytest.approx(0.7) and a["pt_lr"] == 0.1 and a["pt_std"] == pytest.approx(0.1)
    new = column_name("ist_seen_new", 4)
    assert a[new] == pytest.approx(0.15) and a[f"{new}/lr"] == 0.3
    assert a[f"{new}/ratio"] == pytest.approx(0.15 / 0.7)
    assert b[new] == pytest.approx(0.2) and b[f"{new}/ratio"] == pytest.approx(0.5)
    assert c.get(new) is None and c["split"] == "unseen"  # setting 4 is for seen tasks only
    assert c["ist_unseen@d4"] == pytest.approx(0.3) and c["ist_unseen@d4/ratio"] is None  # PT score 0
    assert a["msf_seen@d4/ratio"] == pytest.approx(0.5)
    assert a["ist_seen_new@d4:random"] == pytest.approx(0.05)
    assert a["ipt_pt@d4"] == pytest.approx(0.7) and a["ipt_pt@d4/std"] == pytest.approx(0.0)
    assert a["pt_control"] == pytest.approx(0.7) and a["pt_control/std"] == pytest.approx(0.2)

    agg = {r["column"]: r for r in s.settings}
    row = agg[new]
    assert row["n_tasks"] == 2
    assert row["mean_relative"] == pytest.approx((0.15 / 0.7 + 0.5) / 2)  # mean of per-task ratios
    assert row["ratio_of_means"] == pytest.approx(((0.15 + 0.2) / 2) / ((0.7 + 0.4) / 2))  # ratio of means
    assert row["mean_relative"] != pytest.approx(row["ratio_of_means"])
    unseen = agg["ist_unseen@d4"]
    assert unseen["n_tasks"] == 1 and unseen["mean_relative"] is None  # no task with a usable PT score
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
    assert float(rows[0]["ist_seen_new@d4/ratio"]) == pytest.approx(0.15 / 0.7)
    assert rows[2]["ist_seen_new@d4"] == ""  # blank, not "None"
    with open(tmp_path / "settings.csv") as f:
        settings = list(csv.DictReader(f))
    assert {r["column"] for r in settings} >= {"ist_seen_new@d4", "ipt_pt@d4", "pt_control"}
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
