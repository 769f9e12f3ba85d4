"""bench/quality.py's tables: per-decoder intervals, MSF against the baselines, PT's baseline counts
(a synthetic summary in the shape ipt_dist.summary writes; no training)."""

from __future__ import annotations

import pytest

from ipt_dist.summary import bootstrap_mean_ci
from tests.bench import bench_module


@pytest.fixture(scope="module")
def quality():
    return bench_module("quality")


def _summary(ratios: dict[str, list[float]]) -> dict:
    """Rows of 6 seen tasks with `<col>/ratio`, and settings entries with the real bootstrap CI."""
    n = len(next(iter(ratios.values())))
    rows = [{"task": f"gym__t{i}", "split": "seen", "metric": "ACC", "pt": 0.6} for i in range(n)]
    settings = []
    for col, all_xs in ratios.items():
        for r, x in zip(rows, all_xs):
            if x is not None:  # None: no result for this task
                r[col], r[f"{col}/ratio"] = 0.6 * x, x
        xs = [x for x in all_xs if x is not None]
        n = len(xs)
        lo, hi = bootstrap_mean_ci(xs)
        setting, rest = col.split("@d")
        d, _, dec = rest.partition(":")
        settings.append({"column": col, "setting": setting, "label": setting, "d": int(d), "decoder": dec or "msf",
                         "n_tasks": n, "n_relative": n, "mean_relative": sum(xs) / n,
                         "mean_relative_ci_low": lo, "mean_relative_ci_high": hi})
    return {"rows": rows, "settings": settings}


def test_separated_intervals_say_msf_beats_the_baseline(quality):
    s = _summary({"ist_seen_new@d5": [0.9, 0.95, 0.85, 0.9, 0.92, 0.88],
                  "ist_seen_new@d5:random": [0.2, 0.3, 0.1, 0.25, 0.15, 0.2]})
    c = quality.compare(s, "ist_seen_new", 5, "random")
    assert c["overlap"] is False and c["verdict"].startswith("MSF beats random")
    assert c["difference"]["n"] == 6 and c["difference"]["mean"] == pytest.approx(0.7, abs=1e-9)


def test_overlapping_intervals_cannot_tell(quality):
    s = _summary({"ist_seen_new@d5": [0.9, 0.2, 0.6, 0.4, 0.8, 0.5],
                  "ist_seen_new@d5:pca": [0.4, 0.8, 0.5, 0.9, 0.2, 0.6]})
    c = quality.compare(s, "ist_seen_new", 5, "pca")
    assert c["overlap"] is True and c["verdict"].startswith("cannot tell")


def test_intervals_over_different_tasks_are_not_compared(quality):
    """A decoder whose jobs are not all done (a --partial read) has an interval over fewer tasks: no
    "beats" from intervals of different task sets, only the paired difference on the shared tasks."""
    s = _summary({"ist_seen_new@d5": [0.9, 0.95, 0.85, 0.9, 0.92, 0.88],
                  "ist_seen_new@d5:pca": [0.2, 0.3, 0.1, 0.25, 0.15, 0.2]})
    for r in s["rows"][3:]:  # pca's jobs of these tasks not finished
        del r["ist_seen_new@d5:pca"], r["ist_seen_new@d5:pca/ratio"]
    c = quality.compare(s, "ist_seen_new", 5, "pca")
    assert c["overlap"] is None and c["verdict"].startswith("cannot tell yet: the intervals are over different tasks")
    assert "MSF n=6, pca n=3, 3 shared" in c["verdict"] and "MSF is ahead" in c["verdict"]


def test_intervals_over_as_many_but_other_tasks_are_not_compared(quality):
    """Same n, different tasks: MSF 0.9 on t0-t9; random 0.95 on t5-t9 (where MSF has 0.9) and 0.2 on
    five tasks MSF lacks. The intervals are apart, yet on the shared tasks MSF is behind: no "beats"."""
    s = _summary({"ist_seen_new@d5": [0.9] * 10 + [None] * 5,
                  "ist_seen_new@d5:random": [None] * 5 + [0.95] * 5 + [0.2] * 5})
    c = quality.compare(s, "ist_seen_new", 5, "random")
    assert c["overlap"] is None and "beats" not in c["verdict"] and "10 shared" not in c["verdict"]
    assert "MSF n=10, random n=10, 5 shared" in c["verdict"]
    assert c["difference"]["n"] == 5 and c["difference"]["mean"] == pytest.approx(-0.05)


def test_intervals_over_the_same_tasks_but_other_draws_are_not_compared(quality):
    """A --partial read where one decoder has both draws of a task and the other only one: the same
    task set, yet not the same pairs: no verdict from the intervals."""
    s = _summary({"ist_unseen@d5": [0.9, 0.95, 0.85, 0.9, 0.92, 0.88],
                  "ist_unseen@d5:random": [0.2, 0.3, 0.1, 0.25, 0.15, 0.2]})
    for r in s["rows"]:
        r["ist_unseen@d5/draws"] = r["ist_unseen@d5:random/draws"] = [13, 42]
    assert quality.compare(s, "ist_unseen", 5, "random")["verdict"].startswith("MSF beats random")
    s["rows"][0]["ist_unseen@d5:random/draws"] = [42]  # its second draw not finished yet
    c = quality.compare(s, "ist_unseen", 5, "random")
    assert c["overlap"] is None and "beats" not in c["verdict"]
    assert "MSF n=6, random n=6, 5 shared with the same draws" in c["verdict"]
    assert c["difference"]["n"] == 5  # the paired difference, too, pairs the same draws only


def test_a_missing_baseline_is_not_run(quality):
    s = _summary({"ist_unseen@d5": [0.9, 0.8]})
    assert quality.compare(s, "ist_unseen", 5, "pca")["verdict"] == "not run"


def test_tables_count_pt_against_majority_and_no_prompt(quality):
    s = _summary({"ist_seen_new@d5": [0.9, 0.95, 0.85], "ist_seen_new@d5:random": [0.2, 0.3, 0.1],
                  "ist_seen_new@d5:pca": [0.5, 0.6, 0.4]})
    baselines = {"gym__t0": {"majority": 0.5, "no_prompt": 0.1},   # PT 0.6 above both
                 "gym__t1": {"majority": 0.7, "no_prompt": 0.1},   # below majority
                 "gym__t2": {"majority": 0.5, "no_prompt": 0.65}}  # below the untuned model
    text, numbers = quality.build_tables(s, baselines, [5], {})
    assert numbers["checks"]["pt_above_majority"] == "2/3"
    assert numbers["checks"]["pt_above_no_prompt"] == "2/3"
    assert numbers["checks"]["pt_above_both"] == "1/3"
    assert "t1 (PT 0.600, majority 0.700" in text and "t2 (PT" in text
    assert "| MSF d=5 | rand d=5 | PCA d=5 |" in text
    assert {c["vs"] for c in numbers["comparisons"]} == {"random", "pca"}
    row = next(line for line in text.splitlines() if line.startswith("| ist_seen_new | 5 |"))
    assert "90%" in row and "20%" in row and "50%" in row  # one cell per decoder, with its interval


def test_tables_say_how_much_of_the_new_draw_is_the_first(quality):
    """Setting 4 is labelled "new data": the report states the measured train overlap of the draws."""
    s = _summary({"ist_seen_new@d5": [0.9, 0.95, 0.85]})
    text, numbers = quality.build_tables(s, {}, [5], {}, {"gym__t0": 0.5, "gym__t1": 0.75, "gym__t2": 1.0})
    assert abs(numbers["checks"]["setting4_train_overlap_mean"] - 0.75) < 1e-9
    assert "on average 75% of a new draw's train examples" in text and "identical draws: t2" in text
    assert next(r for r in numbers["rows"] if r["task"] == "gym__t1")["new_draw_overlap"] == 0.75


def test_limits_name_each_reason_with_its_measurement(quality):
    """A missed target is stated with its shortfall, and each candidate reason with the paired numbers of
    the same run: MSF's reconstruction (setting 1), IST against it (3 - 1), new data against the same (4 - 3)."""
    s = _summary({"msf_seen@d5": [0.9, 0.8, 0.85, 0.9], "ist_seen_same@d5": [0.7, 0.6, 0.65, 0.7],
                  "ist_seen_new@d5": [0.6, 0.5, 0.55, 0.6]})
    for r in s["rows"]:  # the draws as the real summary names them: setting 4 is on the new draw only
        r["msf_seen@d5/draws"] = r["ist_seen_same@d5/draws"] = [42]
        r["ist_seen_new@d5/draws"] = [13]
    baselines = {"gym__t0": {"majority": 0.5, "no_prompt": 0.1}, "gym__t1": {"majority": 0.7, "no_prompt": 0.1},
                 "gym__t2": {"majority": 0.5, "no_prompt": 0.1}, "gym__t3": {"majority": 0.5, "no_prompt": 0.1}}
    text, numbers = quality.build_tables(s, baselines, [5], {})
    lim = numbers["checks"]["limits"]
    assert lim["missed:seen tasks, new data (setting 4)"] == pytest.approx(0.80 - 0.5625)
    assert "24 pts short" in text
    assert lim["d5"]["ist_same_minus_msf"]["mean"] == pytest.approx(-0.2)
    assert lim["d5"]["new_minus_same"]["mean"] == pytest.approx(-0.1)
    assert "-20 pts" in text and "-10 pts" in text
    assert lim["pt_strength"]["not_above_both"] == [0.5]  # t1: PT 0.6 below its majority 0.7
    assert "is known to +-" in text


def test_limits_give_the_median_and_name_ratios_over_a_weak_pt(quality):
    """One task whose PT barely scores (a ratio of 375%) lifts the mean of four from ~80% to ~150%:
    the median and the named task stand beside it."""
    s = _summary({"ist_unseen@d5": [0.8, 0.7, 0.9, 3.75]})
    s["rows"][3]["ist_unseen@d5/pt"] = 0.008
    text, numbers = quality.build_tables(s, {}, [5], {})
    lim = numbers["checks"]["limits"]
    assert lim["median:setting 5"] == pytest.approx(0.85) and lim["above_150:setting 5"] == ["t3"]
    assert "median 85% over 4 tasks" in text and "t3 375% (PT 0.008)" in text
    assert lim.get("median:setting 4") is None


def test_wall_ledger_sums_the_invocations_of_a_resumed_run(quality, tmp_path):
    """A run resumed over several invocations reports the sum of their running times, not only the last
    one's; a killed invocation (no close) still counts up to its last heartbeat."""
    import json
    import time

    first = quality.WallLedger(tmp_path, heartbeat_s=0.05)
    time.sleep(0.3)
    first._stop.set()  # killed: the heartbeat stops, close() never runs
    first._thread.join()
    killed_at = json.loads((tmp_path / "wall_time.json").read_text())["segments"][0]
    assert killed_at["phase"] == "started" and killed_at["last"] - killed_at["start"] >= 0.15

    second = quality.WallLedger(tmp_path, heartbeat_s=0.05)
    time.sleep(0.1)
    second.close("report written")
    w = second.summary()
    assert w["segments"] == 2 and len(w["machines"]) == 1
    assert w["total_s"] >= 0.25 and w["total_s"] > w["this_invocation_s"]
    on_disk = json.loads((tmp_path / "wall_time.json").read_text())
    assert [s["phase"] for s in on_disk["segments"]] == ["started", "report written"]
    assert "over 2 invocations" in quality._wall(w)
    second.close("stopped (ValueError)")  # an error after the report: the segment keeps its phase
    assert json.loads((tmp_path / "wall_time.json").read_text())["segments"][-1]["phase"] == "report written"


def test_wall_ledger_write_failure_is_logged_not_raised(quality, tmp_path, caplog):
    ledger = quality.WallLedger(tmp_path, heartbeat_s=60)
    (tmp_path / "a_file").write_text("")
    ledger.path = tmp_path / "a_file" / "wall_time.json"  # its folder is a file: every write fails (even as root)
    ledger.phase("pipeline")
    assert "wall time not recorded" in caplog.text
    ledger.close("report written")


def test_coverage_counts_finished_jobs_per_d_and_names_the_complete_slices(quality):
    """--partial's table: finished / planned per d and decoder; a d is complete only when every job
    of it (IST of each decoder and the evaluation-only settings 1-2) is finished."""
    jobs = ([{"job_id": f"a{i}", "kind": "ist", "d": 5, "decoder": dec} for i, dec in enumerate(["msf", "random", "pca"])]
            + [{"job_id": "e5", "kind": "msf_eval", "d": 5, "decoder": "msf"}]
            + [{"job_id": f"b{i}", "kind": "ist", "d": 50, "decoder": "msf"} for i in range(2)]
            + [{"job_id": "e50", "kind": "msf_eval", "d": 50, "decoder": "msf"}])
    assert quality.coverage(jobs, set())[0][0] == "| d | IST msf | IST random | IST pca | settings 1-2 | complete |"
    lines, complete, counts = quality.coverage(jobs, {"a0", "a1", "a2", "e5", "b0"})
    assert complete == [5]
    assert counts["d50:msf"] == [1, 2] and counts["d50:settings 1-2"] == [0, 1] and counts["d5:pca"] == [1, 1]
    assert lines[2] == "| 5 | 1/1 | 1/1 | 1/1 | 1/1 | yes |" and lines[3] == "| 50 | 1/2 | - | - | 0/1 | no |"
    assert quality.coverage(jobs, set())[1] == []
    # IPT-initialised PT jobs (kind pt, with a d) get their own column, not the settings 1-2 count
    lines, complete, counts = quality.coverage(jobs + [{"job_id": "p5", "kind": "pt", "d": 5, "decoder": "msf"}],
                                               {"a0", "a1", "a2", "e5"})
    assert counts["d5:settings 1-2"] == [1, 1] and counts["d5:IPT-init PT"] == [0, 1] and complete == []
    assert lines[0].endswith("| settings 1-2 | IPT-init PT | complete |")


def test_partial_before_the_ist_sweep_starts_is_one_error_line(tmp_path, capsys):
    """`--partial` on a run whose IST sweep has not started: `error: ...`, exit 2, nothing written."""
    import pathlib

    quality = bench_module("quality")
    data = pathlib.Path(quality.DEFAULT_DATA)
    if not (data / "tasks.json").is_file():
        pytest.skip("needs the shared CrossFit data (../shared/data/tasks)")
    assert quality.main(["--out", str(tmp_path), "--partial"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "jobs.jsonl" in err and "\n" not in err
    assert not (tmp_path / "quality.partial.md").exists() and not (tmp_path / "wall_time.json").exists()


def test_partial_reports_only_finished_jobs_of_the_plan_and_leaves_the_run_as_it_is(tmp_path, capsys):
    """`--partial` on a run part way through its IST sweep: quality.partial.md counts finished /
    planned jobs per d, reads only results of planned jobs (a stale result of another configuration
    in results.jsonl stays out), and writes nothing of the run's own (wall time, quality.md)."""
    import json
    import pathlib

    from ipt_dist.config import load_config

    quality = bench_module("quality")
    data = pathlib.Path(quality.DEFAULT_DATA)
    if not (data / "tasks.json").is_file():
        pytest.skip("needs the shared CrossFit data (../shared/data/tasks)")
    split = json.loads(quality.SPLIT_FILE.read_text())
    seen, unseen = split["train"][0], split["test"][0]
    cfg = load_config(quality.DEFAULT_CONFIG, [f"output_dir={tmp_path}", f"data.data_dir={data}",
                                               f"data.split_file={quality.SPLIT_FILE}"])
    (tmp_path / "baselines.json").write_text(json.dumps(
        {"key": quality.baselines_key(cfg),
         "tasks": {t: {"majority": 0.5, "no_prompt": 0.0} for t in split["train"] + split["test"]}}))
    (tmp_path / "pt_sweep").mkdir()
    (tmp_path / "pt_sweep" / "results.jsonl").write_text("".join(json.dumps(
        {"job_id": f"pt-{t}-{s}", "task": t, "kind": "pt", "role": "pt", "lr": 0.03, "data_seed": s, "metric": "ACC",
         "best_dev": 0.8, "test": 0.8}) + "\n" for t in (seen, unseen) for s in (42, 13)))
    sdir = tmp_path / "ist_sweep"
    sdir.mkdir()
    job = {"kind": "ist", "role": "ist", "stage": "ist", "lr": 0.1, "decoder": "msf"}
    jobs = [{**job, "job_id": "ist-a", "task": seen, "setting": "ist_seen_new", "d": 5, "data_seed": 13, "seen": True},
            {**job, "job_id": "ist-b", "task": unseen, "setting": "ist_unseen", "d": 50, "data_seed": 42, "seen": False}]
    (sdir / "jobs.jsonl").write_text("".join(json.dumps(j) + "\n" for j in jobs))
    done = {**jobs[0], "metric": "ACC", "best_dev": 0.6, "test": 0.6}
    stale = {**jobs[0], "job_id": "ist-stale", "metric": "ACC", "best_dev": 0.99, "test": 0.99}
    (sdir / "results.jsonl").write_text(json.dumps(stale) + "\n" + json.dumps(done) + "\n")
    wall = json.dumps({"segments": [{"start": 0.0, "last": 3600.0, "nproc": 2, "cpu": "cpu", "gpu": None}],
                       "total_s": 3600.0})
    (tmp_path / "wall_time.json").write_text(wall)

    assert quality.main(["--out", str(tmp_path), "--data", str(data), "--partial"]) == 0
    text = (tmp_path / "quality.partial.md").read_text()
    assert "**PARTIAL**" in text and "1 of 2 IST sweep jobs finished; complete d: 5." in text
    assert "| 5 | 1/1 | - | - | - | yes |" in text and "| 50 | - | - | - | - | no |" not in text
    assert "| 50 | 0/1 | - | - | - | no |" in text
    row = next(line for line in text.splitlines() if line.startswith(f"| {seen.removeprefix('gym__')} |"))
    assert "0.600" in row and "0.990" not in row  # the planned job's score, not the stale one
    numbers = json.loads((tmp_path / "quality.partial.json").read_text())
    assert numbers["partial"] is True and numbers["complete_d"] == [5]
    assert numbers["headline"]["seen_new"]["5"] == pytest.approx(0.75)  # 0.6 / PT 0.8 on the same draw
    assert (tmp_path / "wall_time.json").read_text() == wall and not (tmp_path / "quality.md").exists()


def test_untuned_baselines_evaluate_in_passes_with_progress_and_are_cached(tiny_cfg, tmp_path, caplog):
    """Majority answer and the backbone with no prompt, per task; a progress line per pass of
    `tasks_per_pass` tasks; a second call (and a call for a subset) reads the cache, trains nothing."""
    import json
    import logging
    from dataclasses import replace

    quality = bench_module("quality")
    cfg = replace(tiny_cfg, sweep=replace(tiny_cfg.sweep, data_seeds=[42, 13]))
    tasks = ["demo_sentiment", "demo_topic", "demo_parity"]
    cache = tmp_path / "baselines.json"
    on_disk = []  # the cached tasks when each progress line is logged: a stopped run keeps finished passes

    class Watch(logging.Handler):
        def emit(self, record):
            if "tasks," in record.getMessage():
                on_disk.append(sorted(json.loads(cache.read_text())["tasks"]))

    watch = Watch()
    quality.log.addHandler(watch)
    try:
        with caplog.at_level(logging.INFO, logger=quality.log.name):
            got = quality.untuned_baselines(cfg, tasks, cache, tasks_per_pass=2)
    finally:
        quality.log.removeHandler(watch)
    progress = [r.getMessage() for r in caplog.records if "tasks," in r.getMessage()]
    assert [m.split(",")[0] for m in progress] == ["untuned baselines: 2/3 tasks", "untuned baselines: 3/3 tasks"]
    assert on_disk == [sorted(tasks[:2]), sorted(tasks)]
    assert set(got) == set(tasks)
    for t in tasks:
        assert 0.0 <= got[t]["no_prompt"] <= 1.0 and 0.0 < got[t]["majority"] <= 1.0
        assert set(got[t]["majority_by_seed"]) == {"42", "13"}
        assert got[t]["majority"] == pytest.approx(sum(got[t]["majority_by_seed"].values()) / 2)
    stored = json.loads(cache.read_text())
    assert stored["key"] == quality.baselines_key(cfg) and "partial_seconds" not in stored
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=quality.log.name):
        again = quality.untuned_baselines(cfg, tasks[:2], cache)
    assert again == {t: got[t] for t in tasks[:2]} and not caplog.records


def test_per_task_table_shows_the_pt_its_ratios_divide_by(quality):
    """Setting 4 divides by PT on the new draw alone: the per-task table shows that PT beside PT over
    all draws, so that score / PT there is the reported ratio."""
    s = _summary({"ist_seen_new@d5": [0.5, 0.5]})
    s["rows"][0]["ist_seen_new@d5/pt"] = 0.4  # PT over both draws 0.6, on the new draw 0.4
    text, numbers = quality.build_tables(s, {}, [5], {})
    assert "| t0 | seen | ACC | - | - | 0.600 | 0.400 |" in text
    assert numbers["rows"][0]["pt_ist_draws"] == 0.4 and numbers["rows"][1]["pt_ist_draws"] is None
