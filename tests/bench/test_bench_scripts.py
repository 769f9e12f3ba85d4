"""The in-process benchmarks run where a GPU box has torch + transformers (+ DeepSpeed) only:
here they run with `ray` and `mlflow` made unimportable, from a plain checkout (no install)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.bench import bench_module

ROOT = Path(__file__).resolve().parents[2]


def _run_without(blocked: list[str], script: str, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    shadow = tmp_path / "shadow"
    for name in blocked:  # a package that refuses to import shadows the installed one (child processes too)
        (shadow / name).mkdir(parents=True)
        (shadow / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed on this box')\n")
    env = {**os.environ, "PYTHONPATH": str(shadow), "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu"}
    return subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=600, check=False)


ROW_FIELDS = {"K", "kind", "step_s", "jobs_per_hour", "tokens_per_s", "model_tflops", "utilization", "pad_share",
              "flops_per_step"}


def _check_utilization(res: dict, rows: list[dict]) -> None:
    """utilization is a 0-1 float: the row's achieved FLOP/s over the peak measured in the same run."""
    peak = res["peak"]
    assert peak["gflops"] == max(s["gflops"] for s in peak["shapes"]) > 0 and peak["dtype"] == "float32"
    for row in rows:
        assert ROW_FIELDS <= row.keys()
        achieved = row["flops_per_step"] / row["step_s"]
        assert abs(row["utilization"] - achieved / (peak["gflops"] * 1e9)) < 1e-9 * max(1.0, row["utilization"])
        assert 0 < row["utilization"] < 1


def test_ist_throughput_runs_without_ray_and_mlflow(tmp_path):
    out = tmp_path / "ist.json"
    r = _run_without(["ray", "mlflow", "deepspeed"], "ist_throughput.py",
                     ["--arch", "bart-base", "--packs", "1", "2", "--steps", "1", "--warmup", "0", "--prompt-len", "4",
                      "--d", "4", "--input-len", "8", "--target-len", "4", "--peak-squares", "256",
                      "--json", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    rows = res["rows"]
    assert [row["K"] for row in rows] == [1, 2] and all(row["step_s"] > 0 for row in rows)
    assert "| kind | K | step (s) |" in r.stdout and "| utilization |" in r.stdout
    _check_utilization(res, rows)
    # Fixed-length random rows: no padding, and K = 2 is twice K = 1's work (+ Dec(z) per job).
    assert rows[0]["pad_share"] == 0 and abs(rows[1]["flops_per_step"] - 2 * rows[0]["flops_per_step"]) < 1


def test_ist_throughput_real_path_times_train_pack_for_pt_and_ist(tmp_path):
    """--mode real: train_pack itself on the demo tasks, PT and IST, evaluation apart, and a profile."""
    out = tmp_path / "real.json"
    r = _run_without(["ray", "mlflow", "deepspeed"], "ist_throughput.py",
                     ["--mode", "real", "--model", "tiny-llama", "--kinds", "pt", "ist", "--packs", "1", "3",
                      "--steps", "3", "--warmup", "1", "--prompt-len", "4", "--d", "4", "--mid-dim", "16",
                      "--tasks", "2", "--eval-examples", "2", "--max-new-tokens", "2", "--profile", "2",
                      "--peak-squares", "256", "--json", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    rows = res["rows"]
    assert [(row["kind"], row["K"]) for row in rows] == [("pt", 1), ("pt", 3), ("ist", 1), ("ist", 3)]
    _check_utilization(res, rows)
    for row in rows:
        assert row["eval_s"] > 0 and row["train_s"] > row["first_steps_s"] > 0
        assert row["eval_examples"] == row["K"] * 2 * 2  # K jobs x (dev + test) x 2 examples
        assert 0 <= row["pad_share"] < 1
    # Real tasks of different lengths in one pack: rows are padded to the longest.
    assert rows[1]["pad_share"] > 0
    prof = res["profile"]
    assert prof["steps"] == 2 and abs(sum(prof["shares"].values()) - 1) < 1e-6
    assert set(prof["shares"]) == {"matmul", "attention", "elementwise", "host-other", "communication", "optimizer"}
    assert "# profile" in r.stdout and "eval (s)" in r.stdout


def test_peer_peft_compares_packed_pt_with_peft_one_job_at_a_time(tmp_path):
    out = tmp_path / "peer.json"
    r = _run_without(["ray", "mlflow", "deepspeed"], "peer_peft.py",
                     ["--model", "tiny-t5", "--tasks", "2", "--lrs", "0.1", "0.3", "--steps", "2", "--packs", "1", "4",
                      "--prompt-len", "4", "--json", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    rows = res["rows"]
    assert [(row["side"], row["K"]) for row in rows] == [("peft", 1), ("packed", 1), ("packed", 4)]
    assert all(row["jobs"] == 4 and row["train_s"] > 0 and row["mean_train_loss"] > 0 for row in rows)
    for row in rows[1:]:
        assert abs(row["ratio_vs_peft"] - row["jobs_per_hour"] / rows[0]["jobs_per_hour"]) < 1e-9
        assert row["eval_s"] > 0
    assert res["best_K"] in (1, 4) and res["best_ratio"] == max(row["ratio_vs_peft"] for row in rows[1:])
    assert "| peft | 1 | 4 |" in r.stdout


def test_msf_throughput_runs_without_ray_and_mlflow_and_profiles(tmp_path):
    out = tmp_path / "msf.json"
    r = _run_without(["ray", "mlflow"], "msf_throughput.py",
                     ["--zero", "2", "--workers", "1", "--micro", "2", "4", "--steps", "1", "--warmup", "1",
                      "--prompt-len", "4", "--d", "4", "--mid-dim", "8", "--input-len", "8", "--target-len", "4",
                      "--profile", "1", "--peak-squares", "256", "--json", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(row["zero"], row["micro"]) for row in rows] == [(2, 2), (2, 4)]
    prof = rows[0]["profile"]
    assert prof["top"] and abs(sum(prof["shares"].values()) - 1) < 1e-6 and "matmul" in prof["shares"]
    assert "# profile ZeRO-2 workers=1 micro=2" in r.stdout and "| utilization |" in r.stdout
    # The FLOP count by hand for tiny-t5 (d 64, 4 heads x 16, d_ff 128, 2 + 2 layers, vocab V): per row the
    # encoder sees prompt 4 + input 8 = 12 tokens, the decoder the 4 target tokens; no embedding anywhere.
    V = rows[0]["backbone_params"]  # total incl. the tied embedding, to recover V below
    enc, dec, kv = 2 * (4 * 64 * 64 + 2 * 64 * 128 + 2 * 64) + 64, 2 * (6 * 64 * 64 + 2 * 64 * 128 + 3 * 64) + 64, \
        2 * 2 * 64 * 64
    V = (V - enc - dec - kv - 2 * 32 * 4) // 64  # the rest: tied V x 64 embedding + 2 relative-bias tables (32 x 4)
    for row in rows:
        B = row["micro"]
        f = row["flops_per_step"]
        assert f["linear"] == 4 * B * ((enc + kv) * 12 + dec * 4)
        assert f["lm_head"] == 4 * B * V * 64 * 4
        assert f["attention"] == 12 * 64 * B * (2 * 12 * 12 + 2 * (4 * 5 // 2 + 4 * 12))
        assert f["autoencoder"] == 6 * row["ae_params"] * B  # one prompt per task, B distinct tasks here (B <= 8)
        assert row["old_over_new"] > 1  # the old count: all parameters (embedding too) x encoder tokens
        assert 0 < row["utilization"] < 1 and row["peak_gflops"] > 0


def test_msf_balance_measures_both_terms_on_a_tiny_config(tmp_path, demo_dir):
    """bench/msf_balance.py (used to re-tune alpha for msf.lm_reduction): runs, and its numbers hang together."""
    measure = bench_module("msf_balance").measure
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
