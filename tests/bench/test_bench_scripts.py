"""The in-process benchmarks run where a GPU box has torch + transformers (+ DeepSpeed) only:
here they run with `ray` and `mlflow` made unimportable, from a plain checkout (no install)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run_without(blocked: list[str], script: str, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    shadow = tmp_path / "shadow"
    for name in blocked:  # a package that refuses to import shadows the installed one (child processes too)
        (shadow / name).mkdir(parents=True)
        (shadow / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed on this box')\n")
    env = {**os.environ, "PYTHONPATH": str(shadow), "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu"}
    return subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=600)


def test_ist_throughput_runs_without_ray_and_mlflow(tmp_path):
    out = tmp_path / "ist.json"
    r = _run_without(["ray", "mlflow", "deepspeed"], "ist_throughput.py",
                     ["--arch", "bart-base", "--packs", "1", "2", "--steps", "1", "--warmup", "0", "--prompt-len", "4",
                      "--d", "4", "--input-len", "8", "--target-len", "4", "--json", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [row["K"] for row in rows] == [1, 2] and all(row["step_s"] > 0 for row in rows)
    assert "| K | step (s) |" in r.stdout


def test_msf_throughput_runs_without_ray_and_mlflow_and_profiles(tmp_path):
    out = tmp_path / "msf.json"
    r = _run_without(["ray", "mlflow"], "msf_throughput.py",
                     ["--zero", "2", "--workers", "1", "--micro", "2", "4", "--steps", "1", "--warmup", "1",
                      "--prompt-len", "4", "--d", "4", "--mid-dim", "8", "--input-len", "8", "--target-len", "4",
                      "--profile", "1", "--json", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(row["zero"], row["micro"]) for row in rows] == [(2, 2), (2, 4)]
    prof = rows[0]["profile"]
    assert prof["top"] and abs(sum(prof["shares"].values()) - 1) < 1e-6 and "matmul" in prof["shares"]
    assert "# profile ZeRO-2 workers=1 micro=2" in r.stdout


def test_msf_balance_measures_both_terms_on_a_tiny_config(tmp_path, demo_dir):
    """bench/msf_balance.py (used to re-tune alpha for msf.lm_reduction): runs, and its numbers hang together."""
    sys.path.insert(0, str(ROOT))
    try:
        from bench.msf_balance import measure
    finally:
        sys.path.remove(str(ROOT))
    from ipt_dist.config import load_config
    from tests.conftest import tiny_overrides

    cfg = load_config(None, tiny_overrides(tmp_path, demo_dir) + ["data.tasks=[demo_sentiment, demo_topic]"])
    res = measure(cfg, None, batches=2, tokens_only=False)
    assert res["prompts"] == "untrained (pt.init random)" and len(res["rows"]) == 2
    for r in res["rows"]:
        assert r["tokens"] > cfg.msf.batch_size  # several target tokens per row
        assert abs(r["lm_sum"] - r["lm_mean"] * r["tokens"]) < 1e-3 * r["lm_sum"]
        assert r["gn_lm_sum"] > r["gn_lm_mean"] > 0 and r["gn_alpha_mse"] > 0 and r["mse"] > 0
    counted = measure(cfg, None, batches=2, tokens_only=True)["rows"]
    assert [r["tokens"] for r in counted] == [r["tokens"] for r in res["rows"]]
