"""PT/IST sweeps on a real local Ray with a real MLflow SQLite store (tiny T5, demo tasks).

The stage-0 prompts, the PT results of both data seeds (the denominators of relative
performance, one per task and draw) and the MSF checkpoint are trained once per session with the
single-process stages (`tests/sweep/fixtures.py`; the planning tests, which need no Ray, are in
`tests/sweep/`); one 28-job IST sweep (one pack's worker is killed on its first attempt) is shared by
the tests that inspect its results, MLflow runs, retries and resumption.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from ipt_dist.config import ConfigError, load_config
from tests.sweep.fixtures import LRS, N_JOBS, SEEN, UNSEEN, base_overrides, sweep_cfg

# Tests that start Ray carry both marks; the MLflow tests below need no Ray.
distributed = pytest.mark.distributed
slow = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# Ray workers inherit the environment of the process that starts Ray: make the (not necessarily
# pip-installed) package importable before the session's Ray fixture starts it.
if str(ROOT) not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)


def mlflow_runs(cfg) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(cfg.tracking.tracking_uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    return client.search_runs([exp.experiment_id], max_results=5000)


@pytest.fixture(scope="module")
def main_sweep(stage0, ray_local, tmp_path_factory):
    """The 28-job IST sweep, K=8, with the worker of one pack killed on its first attempt."""
    from ipt_dist.distributed.fanout import run_sweep
    from ipt_dist.testing.faults import SWEEP_CRASH_ENV as CRASH_ENV

    out = tmp_path_factory.mktemp("ist")
    marker = out / "crashed.marker"
    cfg = sweep_cfg(stage0, out)
    os.environ[CRASH_ENV] = f"demo_parity:{marker}"
    try:
        result = run_sweep(cfg, stage="ist")
    finally:
        os.environ.pop(CRASH_ENV)
    return {"cfg": cfg, "result": result, "out": out, "marker": marker}


def results(sweep_dir: Path) -> list[dict]:
    from ipt_dist.artifacts import read_jsonl

    return read_jsonl(sweep_dir / "results.jsonl")


# ----------------------------------------------------------------------------- the 28-job sweep


@distributed
@slow
def test_sweep_completes_with_mlflow_parent_children_and_summary(main_sweep, stage0):
    from ipt_dist.summary import pt_scores_by_draw

    result, cfg = main_sweep["result"], main_sweep["cfg"]
    pt = pt_scores_by_draw(stage0["pt"])  # the denominators, per (task, draw)
    assert (result.jobs_total, result.jobs_started, result.jobs_failed) == (N_JOBS, N_JOBS, 0)
    recs = results(result.sweep_dir)
    assert len(recs) == N_JOBS == len({r["job_id"] for r in recs})
    assert Counter(r["setting"] for r in recs) == {"msf_seen": 3, "msf_unseen": 1, "ist_seen_same": 9,
                                                  "ist_seen_new": 9, "ist_unseen": 6}
    for r in recs:
        assert (result.sweep_dir / r["param_file"]).is_file()

    runs = mlflow_runs(cfg)
    parents = [r for r in runs if r.data.tags.get("ipt.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.parent_run_id]
    assert len(parents) == 1 and parents[0].info.run_id == result.parent_run_id
    assert len(children) == N_JOBS == len(runs) - 1
    assert {c.data.tags["ipt.job_id"] for c in children} == {r["job_id"] for r in recs}
    by_id = {r["job_id"]: r for r in recs}
    from mlflow import MlflowClient

    client = MlflowClient(cfg.tracking.tracking_uri)
    for c in children:
        rec = by_id[c.data.tags["ipt.job_id"]]
        p, m = c.data.params, c.data.metrics
        assert p["task"] == rec["task"] and int(p["seed"]) == rec["data_seed"] and int(p["d"]) == 4
        assert p["setting"] == rec["setting"]
        assert m["test"] == pytest.approx(rec["test"]) and m["best_dev"] == pytest.approx(rec["best_dev"])
        assert m["pt_test"] == pytest.approx(pt[(rec["task"], rec["data_seed"])])  # PT on the same draw
        assert c.info.status == "FINISHED"
        if rec["role"] == "ist":
            assert float(p["lr"]) == rec["lr"] and float(p["lr"]) in LRS
            curve = client.get_metric_history(c.info.run_id, "dev")
            expected = [(s, pytest.approx(v)) for s, v in rec["dev_curve"]]
            assert sorted((h.step, h.value) for h in curve) == expected
            assert [s for s, _ in rec["dev_curve"]] == [5, 10]
    # each child's dataset input is its task's draw, with the digest of the training split it used
    from ipt_dist.provenance import split_digest
    from ipt_dist.stages.common import load_raw

    pairs = {(r["task"], r["data_seed"]) for r in recs}
    draws = {(t, s): split_digest(load_raw(cfg, [t], s)[t].train) for t, s in pairs}
    for c in children:
        rec = by_id[c.data.tags["ipt.job_id"]]
        [inp] = client.get_run(c.info.run_id).inputs.dataset_inputs
        assert (inp.dataset.name, inp.dataset.digest) == (f"{rec['task']}@{rec['data_seed']}",
                                                          draws[(rec["task"], rec["data_seed"])])
    assert draws[("demo_topic", 42)] != draws[("demo_topic", 13)]
    art = client.list_artifacts(children[0].info.run_id, "params")
    assert [a.path for a in art] == [f"params/{children[0].data.tags['ipt.job_id']}.safetensors"]
    assert "summary/summary.md" in [a.path for a in client.list_artifacts(result.parent_run_id, "summary")]
    assert parents[0].info.status == "FINISHED"

    s = result.summary
    assert [r["task"] for r in s.rows] == SEEN + UNSEEN  # one row per task
    unseen = s.row("demo_copy_first")
    assert unseen["split"] == "unseen" and unseen.get("ist_seen_same@d4") is None
    assert s.row("demo_topic")["ist_seen_new@d4/lr"] in LRS
    assert {r["column"] for r in s.settings} == {"msf_seen@d4", "msf_unseen@d4", "ist_seen_same@d4",
                                                  "ist_seen_new@d4", "ist_unseen@d4"}
    for name in ("summary.md", "summary.csv", "summary_settings.csv", "summary.json"):
        assert (result.sweep_dir / name).is_file()
    assert len((result.sweep_dir / "summary.csv").read_text().strip().splitlines()) == 1 + len(SEEN + UNSEEN)


@distributed
@slow
def test_dead_worker_is_retried_and_the_sweep_completes(main_sweep):
    assert main_sweep["marker"].is_file(), "the crash hook never fired: the retry path was not exercised"
    recs = results(main_sweep["result"].sweep_dir)
    parity = [r for r in recs if r["task"] == "demo_parity"]
    assert len(parity) == 1 + 3 + 3  # msf_seen + ist_seen_same + ist_seen_new
    assert not (main_sweep["result"].sweep_dir / "failures.jsonl").exists()
    assert main_sweep["result"].jobs_failed == 0


@distributed
@slow
def test_rerunning_the_finished_sweep_starts_nothing(main_sweep):
    from ipt_dist.distributed.fanout import run_sweep

    again = run_sweep(main_sweep["cfg"], stage="ist")
    assert (again.jobs_started, again.jobs_skipped, again.jobs_total) == (0, N_JOBS, N_JOBS)
    assert again.parent_run_id == main_sweep["result"].parent_run_id
    assert len(results(again.sweep_dir)) == N_JOBS
    assert len(mlflow_runs(main_sweep["cfg"])) == 1 + N_JOBS  # no duplicate parent or children


@distributed
@slow
def test_killed_sweep_resumes_and_mlflow_catches_up(main_sweep):
    """Results lost at the end of the file (a driver killed mid-write) rerun; a child run lost
    in MLflow is rewritten from the results file; nothing is duplicated."""
    from mlflow import MlflowClient

    from ipt_dist.distributed.fanout import run_sweep

    cfg, sdir = main_sweep["cfg"], main_sweep["result"].sweep_dir
    lines = (sdir / "results.jsonl").read_text().splitlines()
    lost = [json.loads(x)["job_id"] for x in lines[-3:]]
    (sdir / "results.jsonl").write_text("\n".join(lines[:-3]) + "\n" + lines[-1][:40])  # + a torn line
    client = MlflowClient(cfg.tracking.tracking_uri)
    victim = json.loads(lines[0])["job_id"]
    [run] = [r for r in mlflow_runs(cfg) if r.data.tags.get("ipt.job_id") == victim]
    client.delete_run(run.info.run_id)
    assert len(mlflow_runs(cfg)) == N_JOBS

    resumed = run_sweep(cfg, stage="ist")
    assert resumed.jobs_started == 3 and resumed.jobs_failed == 0
    recs = results(sdir)
    assert len(recs) == N_JOBS and {r["job_id"] for r in recs} >= set(lost)
    runs = mlflow_runs(cfg)
    assert len(runs) == 1 + N_JOBS
    assert Counter(r.data.tags.get("ipt.job_id") for r in runs if r.data.tags.get("ipt.role") == "job") == \
        {r["job_id"]: 1 for r in recs}
    [rewritten] = [r for r in runs if r.data.tags.get("ipt.job_id") == victim]
    assert rewritten.data.tags["ipt.logged"] == "1" and "test" in rewritten.data.metrics
    # The summary equals the uninterrupted sweep's (the re-run jobs are deterministic).
    first, again = main_sweep["result"].summary, resumed.summary
    assert [r["task"] for r in again.rows] == [r["task"] for r in first.rows]
    for a, b in zip(again.rows + again.settings, first.rows + first.settings, strict=True):
        assert a.keys() == b.keys()
        for k, v in b.items():
            if isinstance(v, float):
                assert a[k] == pytest.approx(v, abs=1e-6, nan_ok=True), k
            else:
                assert a[k] == v, k


@distributed
@slow
@pytest.mark.heavy  # ~1.5 min; CI covers MLflow failing for a moment (test_child_run_failing_for_a_moment_...)
def test_mlflow_server_stopped_and_restarted_during_a_sweep_loses_nothing(stage0, ray_local, tmp_path):
    """A real `mlflow server` is stopped after the first results and started again after more
    jobs finished: training goes on, the children that failed meanwhile are queued and written
    once (or caught up by the next submission), and nothing is duplicated."""
    import threading

    from mlflow import MlflowClient

    from ipt_dist.distributed.fanout import run_sweep
    from tests.distributed.conftest import free_port, start_mlflow_server, stop_mlflow_server

    port = free_port()
    db, arts, url = tmp_path / "server.db", tmp_path / "server_artifacts", f"http://127.0.0.1:{port}"
    server = {"proc": start_mlflow_server(db, port, arts)}
    out = tmp_path / "sweep"
    cfg = sweep_cfg(stage0, out, "sweep.pack_size=4", "tracking.enabled=true", f"tracking.tracking_uri={url}",
                    "tracking.experiment=outage", tracking=False)
    results_file = out / "ist_sweep" / "results.jsonl"
    sweep_done, seen = threading.Event(), {}

    def n_results() -> int:
        return len(results_file.read_text().splitlines()) if results_file.is_file() else 0

    def outage() -> None:
        while n_results() < 2 and not sweep_done.is_set():
            time.sleep(0.2)
        stop_mlflow_server(server["proc"])
        seen["down_at"] = n_results()
        while n_results() < seen["down_at"] + 4 and not sweep_done.is_set():
            time.sleep(0.2)
        seen["up_at"] = n_results()
        server["proc"] = start_mlflow_server(db, port, arts)

    thread = threading.Thread(target=outage, daemon=True)
    thread.start()
    try:
        result = run_sweep(cfg, stage="ist")
        sweep_done.set()
        thread.join(timeout=180)
        assert seen["up_at"] >= seen["down_at"] + 4, f"no jobs finished while the server was down: {seen}"
        assert result.jobs_failed == 0 and len(results(result.sweep_dir)) == N_JOBS

        client = MlflowClient(url)

        def runs() -> list:
            exp = client.get_experiment_by_name("outage")
            return client.search_runs([exp.experiment_id], max_results=1000)

        parent = client.get_run(result.parent_run_id)
        if parent.info.status != "FINISHED" or len(runs()) < 1 + N_JOBS:
            # the server came back after the sweep's last retry: the next submission catches up
            again = run_sweep(cfg, stage="ist")
            assert again.jobs_started == 0 and again.parent_run_id == result.parent_run_id
        all_runs = runs()
        children = [r for r in all_runs if r.data.tags.get("ipt.role") == "job"]
        assert len(all_runs) == 1 + N_JOBS
        assert Counter(c.data.tags["ipt.job_id"] for c in children) == \
            {r["job_id"]: 1 for r in results(result.sweep_dir)}
        assert all(c.data.tags.get("ipt.logged") == "1" and "test" in c.data.metrics for c in children)
        assert client.get_run(result.parent_run_id).info.status == "FINISHED"
    finally:
        sweep_done.set()
        thread.join(timeout=180)
        stop_mlflow_server(server["proc"])


@distributed
@slow
def test_disk_filling_up_mid_sweep_is_a_clear_error_and_nothing_is_lost(stage0, ray_local, tmp_path):
    """The sweep writes to a real 8 MB tmpfs that a filler file fills up after the first results:
    the driver stops with an error naming the file and the fix, every results line already
    written is complete and has its parameter file, and the same command finishes the sweep
    once space is freed."""
    import subprocess
    import threading

    from ipt_dist.artifacts import ArtifactError, read_jsonl
    from ipt_dist.distributed.fanout import run_sweep

    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], capture_output=True,
                             check=False)
    if mounted.returncode != 0:
        pytest.skip(f"needs permission to mount a small tmpfs: {mounted.stderr.decode().strip()}")
    try:
        out = disk / "run"
        cfg = sweep_cfg(stage0, out, "sweep.pack_size=4", tracking=False)
        sdir = out / "ist_sweep"
        filler, stop = disk / "filler", threading.Event()

        def fill() -> None:
            while not stop.is_set() and len(read_jsonl(sdir / "results.jsonl")) < 2:
                time.sleep(0.1)
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
            try:
                while True:
                    os.write(fd, b"\0" * 65536)
            except OSError:
                pass
            finally:
                os.close(fd)

        thread = threading.Thread(target=fill, daemon=True)
        thread.start()
        try:
            with pytest.raises(ArtifactError) as err:
                run_sweep(cfg, stage="ist")
        finally:
            stop.set()
            thread.join(timeout=60)
        msg = str(err.value)
        assert "no space left on the device" in msg and str(sdir) in msg and "run the same command again" in msg
        lines = (sdir / "results.jsonl").read_text().splitlines()
        kept = [json.loads(line) for line in lines]  # every line complete
        assert 2 <= len(kept) < N_JOBS
        for r in kept:
            assert (sdir / r["param_file"]).stat().st_size > 0
        assert not list(sdir.glob("params/*.tmp"))

        filler.unlink()
        again = run_sweep(cfg, stage="ist")
        assert again.jobs_failed == 0 and again.jobs_started == N_JOBS - len(kept)
        recs = results(sdir)
        assert len(recs) == N_JOBS == len({r["job_id"] for r in recs})
        assert [r["job_id"] for r in recs[: len(kept)]] == [r["job_id"] for r in kept]
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, check=False)


@distributed
@slow
def test_sweep_asking_more_than_any_node_has_fails_before_any_pack(stage0, ray_local, tmp_path):
    """A Ray task that no node can place would wait forever: a clear error instead."""
    from ipt_dist.distributed.fanout import run_sweep

    cfg = sweep_cfg(stage0, tmp_path, "sweep.num_gpus=1", tracking=False)
    with pytest.raises(ConfigError, match=r"sweep.num_gpus=1.0: no node of this Ray cluster has that many GPUs"):
        run_sweep(cfg, stage="ist")
    assert not (tmp_path / "ist_sweep" / "results.jsonl").exists()


@distributed
@slow
def test_packed_sweep_equals_one_job_per_task(main_sweep, stage0, tmp_path):
    """K=1 (one Ray task per job) gives the same ids, scores, curves and z as the K=8 packs."""
    from ipt_dist.distributed.fanout import run_sweep

    cfg = sweep_cfg(stage0, tmp_path, "sweep.pack_size=1", "sweep.lrs=[0.3]",
                    "sweep.settings=[ist_seen_same, ist_unseen]", tracking=False)
    single = run_sweep(cfg, stage="ist")
    assert single.jobs_started == 3 + 2 and single.jobs_failed == 0
    packed = {r["job_id"]: r for r in results(main_sweep["result"].sweep_dir)}
    for r in results(single.sweep_dir):
        p = packed[r["job_id"]]  # same content-derived id, whatever the output dir or pack size
        assert (r["task"], r["data_seed"], r["lr"]) == (p["task"], p["data_seed"], p["lr"])
        assert r["best_dev"] == pytest.approx(p["best_dev"], abs=1e-6) and r["test"] == pytest.approx(p["test"])
        assert [s for s, _ in r["loss_curve"]] == [s for s, _ in p["loss_curve"]]
        assert [v for _, v in r["loss_curve"]] == pytest.approx([v for _, v in p["loss_curve"]], abs=1e-4)
        z1 = _load(single.sweep_dir / r["param_file"])
        z8 = _load(main_sweep["result"].sweep_dir / p["param_file"])
        assert z1.shape == (4,) and torch.allclose(z1, z8, atol=1e-4)


@distributed
@slow
def test_a_failing_pack_is_recorded_and_the_rest_of_the_sweep_completes(stage0, ray_local, tmp_path, caplog):
    """A Python error in a worker is not retried (it would fail again): its jobs are reported as
    failed (one error line on the driver's console, quiet or not), stay out of results.jsonl, and
    every other pack still finishes."""
    import logging

    from ipt_dist.artifacts import read_msf_meta, save_msf_checkpoint
    from ipt_dist.distributed.fanout import run_sweep
    from ipt_dist.modeling.autoencoder import PromptAutoencoder

    meta = read_msf_meta(stage0["ckpt"])
    wrong = PromptAutoencoder(5, 4, 32, 16)  # prompts of hidden size 32: tiny-t5 has 64
    save_msf_checkpoint(tmp_path / "msf_d5", wrong, {"backbone": "tiny-t5", "tasks": meta["tasks"],
                                                     "provenance": meta["provenance"]})
    cfg = sweep_cfg(stage0, tmp_path, f"sweep.dims={{4: {stage0['ckpt']}, 5: {tmp_path / 'msf_d5'}}}",
                    "sweep.lrs=[0.3]", "sweep.settings=[ist_seen_same]", tracking=False)
    with caplog.at_level(logging.INFO, logger="ipt_dist"):
        res = run_sweep(cfg, stage="ist")
    assert (res.jobs_total, res.jobs_failed) == (6, 3)
    [line] = [r for r in caplog.records if r.levelno == logging.ERROR and "failed" in r.getMessage()]
    assert line.name.startswith("ipt_dist.") and "hidden size 32" in line.getMessage()  # the console shows it
    assert {r["d"] for r in results(res.sweep_dir)} == {4}
    [failure] = [json.loads(x) for x in (res.sweep_dir / "failures.jsonl").read_text().splitlines()]
    assert sorted(failure["job_ids"]) == sorted(res.failed_job_ids)
    assert "hidden size 32" in failure["error"] and "backbone tiny-t5 has 64" in failure["error"]


def _load(path: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return next(iter(load_file(str(path)).values()))


# ----------------------------------------------------------------------------- PT sweep, smoke test


@distributed
@slow
def test_pt_sweep_writes_stage0_prompts_and_reruns_nothing(stage0, ray_local, tmp_path):
    from ipt_dist.artifacts import load_prompt
    from ipt_dist.distributed.fanout import run_sweep
    from ipt_dist.summary import select_best_lr

    cfg = sweep_cfg(stage0, tmp_path, "data.tasks=[demo_sentiment, demo_topic]", "data.unseen_tasks=[]",
                    "sweep.data_seeds=[42]", "sweep.lrs=[0.1, 0.3]", "sweep.pack_size=4", "msf.prompts_dir=null")
    res = run_sweep(cfg, stage="pt")
    assert (res.jobs_total, res.jobs_started, res.jobs_failed) == (4, 4, 0)
    recs = results(res.sweep_dir)
    assert [r["task"] for r in res.summary.rows] == ["demo_sentiment", "demo_topic"]
    for task in ("demo_sentiment", "demo_topic"):
        best = select_best_lr([r for r in recs if r["task"] == task])
        prompt, meta = load_prompt(tmp_path / "prompts" / f"{task}.safetensors")
        assert meta["job_id"] == best.job_ids[0] and prompt.shape == (4, 64)
        assert res.summary.row(task)["best_lr"] == best.lr
    again = run_sweep(cfg, stage="pt")
    assert again.jobs_started == 0 and len(mlflow_runs(cfg)) == 1 + 4


@distributed
@slow
def test_smoke_entry_point_twice_runs_nothing_the_second_time(ray_local, tmp_path, capsys, monkeypatch):
    """`ray_jobs/ist_sweep.py --smoke-test`: runs its own stage-0 PT sweep (the prompts and the PT
    score of every draw) and MSF, runs IST with the random- and PCA-decoder baselines and
    IPT-initialised PT; the second submission runs nothing."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ist_sweep_entry", ROOT / "ray_jobs" / "ist_sweep.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    argv = ["--smoke-test", "--out", str(tmp_path), "--set", "backbone.name_or_path=tiny-t5",
            "--set", "sweep.lrs=[0.3]", "--set", "pt.steps=6",
            "--set", "ist.steps=6", "--set", "msf.steps=4", "--set", "data.max_examples=8",
            "--set", "data.train_size=6", "--set", "sweep.pca_decoder=true"]
    assert entry.main(argv) == 0
    first = capsys.readouterr().out
    # 12 MSF-decoder jobs + 8 random-decoder + 8 PCA-decoder + 8 plain PT + 8 IPT-initialised PT
    assert "44 jobs: 44 run now, 0 already done, 0 failed" in first
    recs = results(tmp_path / "ist_sweep")
    ipt = [r for r in recs if r["role"] == "ipt_pt"]
    assert len(ipt) == 8 and all(r["z_source"] in {x["job_id"] for x in recs} for r in ipt)
    header = (tmp_path / "ist_sweep" / "summary.csv").read_text().splitlines()[0]
    assert "ipt_pt@d4/std" in header and "ist_unseen@d4:pca/ratio" in header
    pca = [r for r in recs if r.get("decoder") == "pca"]
    assert len(pca) == 8 and {r["setting"] for r in pca} == {"ist_seen_same", "ist_seen_new", "ist_unseen"}
    pt = results(tmp_path / "pt_sweep")  # 4 tasks x 2 draws x 1 lr: a denominator for every IST draw
    assert sorted((r["task"], r["data_seed"]) for r in pt) == sorted(
        (t, s) for t in ["demo_sentiment", "demo_topic", "demo_parity", "demo_copy_first"] for s in (42, 13))
    assert entry.main(argv) == 0
    assert "44 jobs: 0 run now, 44 already done, 0 failed" in capsys.readouterr().out
    assert len(results(tmp_path / "pt_sweep")) == 8  # the PT sweep reran nothing either
    cfg = load_config(ROOT / "configs" / "sweep_smoke.yaml",
                      [f"output_dir={tmp_path}", f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db"])
    runs = mlflow_runs(cfg)
    assert len(runs) == (1 + 8) + (1 + 44)  # PT sweep parent + children, the IST sweep's
    assert sum(r.data.params.get("decoder") == "pca" for r in runs) == 8


# ----------------------------------------------------------------------------- MLflow resilience (no Ray)


def test_child_run_failing_for_a_moment_is_retried_without_duplicates(tmp_path):
    """A real failure of the artifact store (its directory is blocked by a file) loses nothing:
    the half-written child is removed, queued, and written once when the store is back."""
    from ipt_dist.distributed.sweep_tracking import SweepTracker, sweep_key

    cfg = load_config(None, [f"output_dir={tmp_path}"])
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = SweepTracker(uri, "resilience", sweep_key("ist", tmp_path), "ist-sweep", "ist", tmp_path)
    tracker.start(cfg)
    param = tmp_path / "z.safetensors"
    param.write_bytes(b"not really a tensor, but a file to upload")
    (tmp_path / "mlartifacts").write_text("a file where the artifact directory should be")
    rec = {"job_id": "ist-abc", "task": "t", "role": "ist", "data_seed": 42, "seed": 42, "lr": 0.1, "d": 4,
           "best_dev": 0.5, "test": 0.25, "dev_curve": [[5, 0.4], [10, 0.5]], "loss_curve": []}
    assert tracker.log_job(rec, param) is False
    assert not tracker.retry_pending()
    (tmp_path / "mlartifacts").unlink()
    assert tracker.retry_pending()
    tracker.log_job(rec, param)  # already written: a no-op
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("resilience")
    children = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("ipt.role") == "job"]
    assert len(children) == 1 and children[0].data.metrics["test"] == 0.25
    # A new tracker (the next submission) finds it by tag and writes nothing more.
    again = SweepTracker(uri, "resilience", sweep_key("ist", tmp_path), "ist-sweep", "ist", tmp_path)
    again.start(cfg)
    assert again.catch_up([rec], tmp_path) == 0 and again.parent_run_id == tracker.parent_run_id


def _blocked_background_tracker(tmp_path, name):
    """A real background tracker (SQLite MLflow) whose writer thread waits on `gate` before each
    child: what the caller does while MLflow is slow is then deterministic."""
    import threading

    from ipt_dist.distributed.sweep_tracking import BackgroundSweepTracker, SweepTracker, sweep_key

    cfg = load_config(None, [f"output_dir={tmp_path}"])
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    inner = SweepTracker(uri, name, sweep_key("ist", tmp_path), "ist-sweep", "ist", tmp_path)
    tracker = BackgroundSweepTracker(inner)
    tracker.start(cfg)
    gate, started, written = threading.Event(), threading.Event(), []
    write = inner._write_child

    def gated_write(rec, path, pt):
        started.set()
        gate.wait(timeout=60)
        write(rec, path, pt)
        written.append((rec["job_id"], threading.current_thread().name))

    inner._write_child = gated_write
    recs = [{"job_id": f"ist-{i}", "task": "t", "role": "ist", "data_seed": 42, "seed": i, "lr": 0.1, "d": 4,
             "best_dev": 0.5, "test": 0.1 * i, "dev_curve": [[5, 0.5]], "loss_curve": []} for i in range(5)]
    tracker.started = started  # the writer has taken its first child
    return cfg, uri, tracker, gate, written, recs


def _children(uri, experiment) -> dict:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("ipt.role") == "job"]
    assert len({r.data.tags["ipt.job_id"] for r in runs}) == len(runs), "a child was written twice"
    return {r.data.tags["ipt.job_id"]: r for r in runs}


def test_background_writer_keeps_the_loop_free_writes_in_order_and_finish_waits(tmp_path):
    """With MLflow stalled, queuing children and progress returns at once (the fan-out loop goes on);
    the writer thread writes them in submission order; `finish` waits for all of them and the
    parent holds the latest progress."""
    from mlflow import MlflowClient

    _, uri, tracker, gate, written, recs = _blocked_background_tracker(tmp_path, "bg")
    for i, rec in enumerate(recs):
        assert tracker.log_job(rec, None, 0.5) is True
        tracker.log_progress(i + 1, 0, len(recs))
    assert written == [] and tracker.backlog == len(recs)  # nothing waited for the stalled store
    gate.set()
    tracker.finish("FINISHED", None, tmp_path, {"jobs_done": len(recs)})
    assert [j for j, _ in written] == [r["job_id"] for r in recs]
    assert {t for _, t in written} == {"mlflow-writer_0"}  # one writer thread, never the caller's
    children = _children(uri, "bg")
    assert sorted(children) == sorted(r["job_id"] for r in recs)
    assert children["ist-2"].data.metrics["relative"] == pytest.approx(0.2 / 0.5)
    parent = MlflowClient(uri).get_run(tracker.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["jobs_done"] == len(recs)
    assert tracker.backlog == 0


def test_background_writer_interrupted_leaves_the_queue_to_the_next_start(tmp_path):
    """After Ctrl-C the driver does not sit through the queue: the child being written is finished,
    the rest are left, and the next submission's catch-up (from results.jsonl) writes exactly those."""
    import threading

    from ipt_dist.distributed.sweep_tracking import SweepTracker, sweep_key

    cfg, uri, tracker, gate, written, recs = _blocked_background_tracker(tmp_path, "bgkill")
    for rec in recs:
        tracker.log_job(rec, None)
    assert tracker.started.wait(timeout=60)
    threading.Timer(0.5, gate.set).start()  # the write in progress completes after the interrupt
    tracker.finish("KILLED", None, tmp_path, {})
    assert [j for j, _ in written] == ["ist-0"] and tracker.backlog == len(recs) - 1
    assert sorted(_children(uri, "bgkill")) == ["ist-0"]
    again = SweepTracker(uri, "bgkill", sweep_key("ist", tmp_path), "ist-sweep", "ist", tmp_path)
    again.start(cfg)
    assert again.parent_run_id == tracker.parent_run_id
    assert again.catch_up(recs, tmp_path) == len(recs) - 1
    assert sorted(_children(uri, "bgkill")) == sorted(r["job_id"] for r in recs)


def test_ctrl_c_while_the_queue_drains_stops_it_and_closes_the_parent_as_killed(tmp_path):
    """A second Ctrl-C (a real SIGINT) while `finish` waits for a long queue: the child being written
    completes, the rest are left to the next catch-up, and the parent is closed as KILLED."""
    import signal
    import threading

    from mlflow import MlflowClient

    _, uri, tracker, gate, written, recs = _blocked_background_tracker(tmp_path, "bgint")
    for rec in recs:
        tracker.log_job(rec, None)
    assert tracker.started.wait(timeout=60)
    main = threading.main_thread().ident
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # Ray installs its own handler
    try:
        threading.Timer(0.5, signal.pthread_kill, (main, signal.SIGINT)).start()
        threading.Timer(1.0, gate.set).start()
        with pytest.raises(KeyboardInterrupt):
            tracker.finish("FINISHED", None, tmp_path, {})
    finally:
        signal.signal(signal.SIGINT, previous)
    assert [j for j, _ in written] == ["ist-0"] and sorted(_children(uri, "bgint")) == ["ist-0"]
    assert MlflowClient(uri).get_run(tracker.parent_run_id).info.status == "KILLED"


def test_child_relative_is_paired_with_pt_on_the_same_draw_and_the_parent_has_the_interval(tmp_path):
    """A child's `pt_test` / `relative` use PT on its own task and draw; the parent holds each
    column's mean relative performance with its bootstrap interval."""
    from mlflow import MlflowClient

    from ipt_dist.distributed.sweep_tracking import SweepTracker, sweep_key
    from ipt_dist.summary import pt_scores_by_draw, summarize_ist

    cfg = load_config(None, [f"output_dir={tmp_path}"])
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = SweepTracker(uri, "paired", sweep_key("ist", tmp_path), "ist-sweep", "ist", tmp_path)
    tracker.start(cfg)
    recs = [{"job_id": f"ist-{t}-{s}", "task": t, "role": "ist", "setting": "ist_unseen", "d": 4,
             "decoder": "msf", "data_seed": s, "lr": 0.1, "best_dev": 0.5, "test": test}
            for t, s, test in [("a", 42, 0.4), ("a", 13, 0.4), ("b", 42, 0.3), ("b", 13, 0.3), ("c", 42, -0.1)]]
    pt = [{"job_id": f"pt-{t}-{s}", "task": t, "role": "pt", "data_seed": s, "lr": 0.3, "best_dev": 0.5,
           "test": test} for t, s, test in [("a", 42, 0.8), ("a", 13, 0.5), ("b", 42, 0.2), ("b", 13, 0.6),
                                            ("c", 42, -0.05)]]  # c: a Matthews score below 0 has no ratio
    assert tracker.catch_up(recs, tmp_path, pt_scores_by_draw(pt)) == 5
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("paired")
    children = {r.data.tags["ipt.job_id"]: r.data.metrics for r in client.search_runs([exp.experiment_id])
                if r.data.tags.get("ipt.role") == "job"}
    assert children["ist-a-42"]["pt_test"] == 0.8 and children["ist-a-42"]["relative"] == pytest.approx(0.5)
    assert children["ist-a-13"]["pt_test"] == 0.5 and children["ist-a-13"]["relative"] == pytest.approx(0.8)
    assert children["ist-b-42"]["relative"] == pytest.approx(1.5)
    assert children["ist-c-42"]["pt_test"] == -0.05 and "relative" not in children["ist-c-42"]
    summary = summarize_ist(recs, pt, unseen=["a", "b", "c"])
    tracker.finish("FINISHED", summary, tmp_path, {"jobs_done": 5})
    parent = client.get_run(tracker.parent_run_id).data.metrics
    [row] = summary.settings
    assert parent["ist_unseen_d4/mean_relative"] == pytest.approx((0.65 + 1.0) / 2)
    assert parent["ist_unseen_d4/mean_relative_ci_low"] == pytest.approx(row["mean_relative_ci_low"])
    assert parent["ist_unseen_d4/mean_relative_ci_high"] == pytest.approx(row["mean_relative_ci_high"])
    assert parent["ist_unseen_d4/n_relative"] == 2


GPU_SWEEP = """
import sys, ray
from ipt_dist.config import load_config
from ipt_dist.distributed.fanout import run_sweep
ray.init(address="local", num_cpus=2, num_gpus=2, _temp_dir=sys.argv[2], include_dashboard=False,
         log_to_driver=False)  # its own Ray, with two declared (fake) GPUs
res = run_sweep(load_config(sys.argv[1]), stage="ist")
print("RESULT", res.jobs_started, res.jobs_failed)
"""


@distributed
@slow
def test_gpu_sweep_runs_packs_on_a_pool_of_actors_that_survives_a_dead_worker(main_sweep, stage0, tmp_path):
    """GPU packs run on one long-lived actor per slot (no process start or backbone load per pack;
    a reused task worker would keep its first CUDA device). Killed on its first pack, the actor is
    restarted and the pack retried; the results equal the CPU-task sweep's."""
    import shutil
    import subprocess
    import sys
    import tempfile

    from ipt_dist.config import save_config
    from ipt_dist.testing.faults import SWEEP_CRASH_ENV as CRASH_ENV

    cfg = sweep_cfg(stage0, tmp_path, "sweep.pack_size=1", "sweep.lrs=[0.3]", "sweep.num_gpus=1",
                    "sweep.settings=[ist_seen_same, ist_unseen]", tracking=False)
    save_config(cfg, tmp_path / "gpu.yaml")
    marker = tmp_path / "crashed.marker"
    tmp = tempfile.mkdtemp(prefix="rg")  # short: Ray's socket paths live under it
    try:
        r = subprocess.run([sys.executable, "-c", GPU_SWEEP, str(tmp_path / "gpu.yaml"), tmp], capture_output=True,
                           text=True, timeout=600, cwd=ROOT,
                           env={**os.environ, CRASH_ENV: f"demo_topic:{marker}"}, check=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "RESULT 5 0" in r.stdout, r.stdout[-2000:]
    assert marker.is_file(), "the crash hook never fired: the restart path was not exercised"
    recs = results(tmp_path / "ist_sweep")
    workers = {rec["worker"] for rec in recs}
    # 5 packs of one job on two long-lived actors (+1: the killed one's restart); fresh processes would be 5+
    assert len(recs) == 5 and len(workers) <= 3, workers
    packed = {rec["job_id"]: rec for rec in results(main_sweep["result"].sweep_dir)}
    for rec in recs:
        assert rec["test"] == pytest.approx(packed[rec["job_id"]]["test"])
        assert rec["best_dev"] == pytest.approx(packed[rec["job_id"]]["best_dev"], abs=1e-6)


def test_results_of_another_configuration_in_the_sweep_dir_are_refused(stage0, tmp_path):
    """Re-running a changed grid into the same directory would mix two grids (and two grids'
    children under one MLflow parent): refused before any work, naming what changed."""
    from ipt_dist.artifacts import append_jsonl
    from ipt_dist.config import save_config
    from ipt_dist.distributed.fanout import run_sweep
    from ipt_dist.sweep.plan import plan_sweep

    old = sweep_cfg(stage0, tmp_path, tracking=False)
    plan = plan_sweep(old, "ist")
    save_config(plan.cfg, plan.sweep_dir / "config.yaml")
    append_jsonl(plan.sweep_dir / "results.jsonl", {"job_id": plan.jobs[-1].job_id, "task": "demo_topic",
                                                    "role": "ist"})
    new = sweep_cfg(stage0, tmp_path, "ist.steps=12", tracking=False)
    with pytest.raises(ConfigError) as err:
        run_sweep(new, stage="ist")
    msg = str(err.value)
    assert "holds 1 results this configuration does not plan" in msg and plan.jobs[-1].job_id in msg
    assert "ist.steps: 10 -> 12" in msg and "Fix: run this configuration with another output_dir" in msg
    assert len((plan.sweep_dir / "results.jsonl").read_text().splitlines()) == 1  # nothing deleted


@distributed
@slow
def test_heartbeat_shows_the_steps_of_a_running_pack(ray_local, demo_dir, tmp_path, monkeypatch, caplog):
    """Through real Ray: the worker's steps reach the progress board and the driver's heartbeat line
    (here every second instead of every minute) names the running pack's steps and its ETA."""
    import logging
    import re

    from ipt_dist.distributed import fanout

    monkeypatch.setattr(fanout, "HEARTBEAT_S", 0.0)
    monkeypatch.setattr(fanout, "WAIT_S", 0.2)
    # long enough (a few seconds on an idle machine) that the driver waits several times while it runs
    cfg = load_config(None, base_overrides(tmp_path, demo_dir) + [
        "data.tasks=[demo_sentiment]", "data.unseen_tasks=[]", "sweep.data_seeds=[42]", "sweep.lrs=[0.3]",
        "pt.steps=400", "pt.eval_every=400", "tracking.enabled=false", "sweep.max_in_flight=1"])
    with caplog.at_level(logging.INFO, logger="ipt_dist"):
        res = fanout.run_sweep(cfg, stage="pt")
    assert (res.jobs_total, res.jobs_failed) == (1, 0)
    beats = [r.getMessage() for r in caplog.records if "| pack 1 (pt x1): " in r.getMessage()]
    assert beats, [r.getMessage() for r in caplog.records]
    assert re.search(r"\| pack 1 \(pt x1\): \d+/400 steps, ETA (\d+m\d\ds|\?)$", beats[-1]), beats[-1]
