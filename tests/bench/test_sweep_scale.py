"""bench/sweep_scale.py at toy size: one real PT sweep (60 one-step jobs on tiny-t5, local Ray, MLflow on
SQLite), its JSON row consistent with what the sweep left on disk and in MLflow."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.distributed
def test_sweep_scale_bench_measures_a_real_sweep(tmp_path):
    out, js = tmp_path / "work", tmp_path / "scale.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "sweep_scale.py"), "--out", str(out), "--sizes", "40",
                        "--stores", "sqlite", "--pack-size", "32", "--no-warmup", "--json", str(js)],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900, check=False)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    [row] = json.loads(js.read_text())["rows"]
    # 40 rounds to one task x 5 draws x 12 lrs
    assert (row["store"], row["jobs"], row["tasks"], row["pack_size"]) == ("sqlite", 60, 1, 32)
    assert set(row["timings"]) >= {"prepare", "packs", "finish", "total"}
    assert 0 < row["timings"]["packs"] < row["wall_s"]
    assert row["driver_cpu_s"] > 0 and row["peak_rss_mb"] > 100 and row["rss_growth_mb"] >= 0

    # every job was logged once as an MLflow child, through the tracker the bench times
    assert row["children_logged"] == 60 and row["mlflow_ms_per_child"] > 0
    from mlflow import MlflowClient

    run_dir = out / "sqlite_40"
    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    [exp] = [e for e in client.search_experiments() if e.name.startswith("scale-sqlite_40")]
    children = client.search_runs([exp.experiment_id], "tags.`ipt.role` = 'job'", max_results=1000)
    assert len(children) == 60 and all(c.data.tags.get("ipt.logged") == "1" for c in children)

    # the per-1,000-job sizes are the files' own sizes
    results = run_dir / "pt_sweep" / "results.jsonl"
    assert len(results.read_text().splitlines()) == 60
    assert row["results_bytes_per_1000_jobs"] == pytest.approx(results.stat().st_size * 1000 / 60)
    assert row["sqlite_db_bytes_per_1000_jobs"] == pytest.approx((run_dir / "mlflow.db").stat().st_size * 1000 / 60)
    assert row["append_ms_per_job"] > 0 and row["resubmit_s"] > 0
    assert "| store | jobs | wall (s) |" in r.stdout and "| sqlite | 60 |" in r.stdout
