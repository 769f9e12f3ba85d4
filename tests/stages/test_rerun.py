"""Re-running a single-process stage: same inputs skip finished work; changed inputs are refused."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from ipt_dist.artifacts import prompt_path, read_jsonl, save_prompt
from ipt_dist.config import ConfigError
from ipt_dist.rerun import stage_inputs
from ipt_dist.stages.pt import run_pt


def _digest(p):
    return hashlib.sha1(p.read_bytes()).hexdigest()


def test_pt_rerun_skips_same_inputs_and_refuses_changed_ones(tiny_cfg, caplog):
    cfg = replace(tiny_cfg, data=replace(tiny_cfg.data, tasks=tiny_cfg.data.tasks[:1], unseen_tasks=[]))
    out = cfg.out
    first = run_pt(cfg)
    prompt = prompt_path(out / "prompts", first[0]["task"])
    digest, config_text = _digest(prompt), (out / "pt" / "config.yaml").read_text()
    with caplog.at_level("INFO"):
        again = run_pt(cfg)  # same inputs: nothing retrained
    assert [(r["job_id"], r["test"], r["seconds"]) for r in again] == [(r["job_id"], r["test"], r["seconds"])
                                                                       for r in first]
    assert "already trained with these inputs" in caplog.text
    changed = replace(cfg, pt=replace(cfg.pt, lr=0.001, prompt_len=8))
    with pytest.raises(ConfigError, match=r"other inputs\. Changed: pt\.lr: 0\.3 -> 0\.001; pt\.prompt_len: 4 -> 8"):
        run_pt(changed)
    # nothing on disk changed: the prompt, its results line and the recorded config
    assert _digest(prompt) == digest and (out / "pt" / "config.yaml").read_text() == config_text
    assert len(read_jsonl(out / "pt" / "results.jsonl")) == 1


def test_pt_never_overwrites_a_prompt_it_did_not_write(tiny_cfg):
    import torch

    cfg = replace(tiny_cfg, data=replace(tiny_cfg.data, tasks=tiny_cfg.data.tasks[:1], unseen_tasks=[]))
    task = cfg.data.tasks[0]
    path = prompt_path(cfg.out / "prompts", task)
    save_prompt(path, torch.zeros(4, 64), backbone="tiny-t5", task=task)  # e.g. the PT sweep's
    digest = _digest(path)
    with pytest.raises(ConfigError, match=f"did not write here.*{task}"):
        run_pt(cfg)
    assert _digest(path) == digest


def test_inputs_leave_out_what_does_not_change_results(tiny_cfg):
    base = stage_inputs(tiny_cfg, "pt")
    assert stage_inputs(replace(tiny_cfg, output_dir="/elsewhere"), "pt") == base
    assert stage_inputs(replace(tiny_cfg, data=replace(tiny_cfg.data, tasks=["x"])), "pt") == base  # growing
    assert stage_inputs(replace(tiny_cfg, pt=replace(tiny_cfg.pt, steps=3)), "pt") != base
    ist = stage_inputs(tiny_cfg, "ist", {"decoder": "abc"})
    assert ist["input.decoder"] == "abc" and "ist.lr" not in ist and "pt.lr" not in ist
    # how the backbone pass is batched or run is not an input: neither changing it nor a directory
    # written before these fields existed (its inputs.json lacks them) is refused
    fast = replace(tiny_cfg, backbone=replace(tiny_cfg.backbone, length_buckets=4, compile=True))
    for stage in ("pt", "msf", "ist"):
        assert stage_inputs(fast, stage) == stage_inputs(tiny_cfg, stage)
        assert not any(k in stage_inputs(tiny_cfg, stage) for k in ("backbone.length_buckets", "backbone.compile"))
        # a separator is an input once set; empty (the default) leaves earlier inputs.json equal
        assert "backbone.answer_prefix" not in stage_inputs(tiny_cfg, stage)
        sep = replace(tiny_cfg, backbone=replace(tiny_cfg.backbone, answer_prefix=" =>"))
        assert stage_inputs(sep, stage)["backbone.answer_prefix"] == " =>"


@pytest.mark.slow
def test_msf_and_ist_reruns_never_overwrite_finished_work(tiny_cfg, caplog):
    from ipt_dist.stages.ist import run_ist
    from ipt_dist.stages.msf import run_msf

    cfg = replace(tiny_cfg, data=replace(tiny_cfg.data, tasks=tiny_cfg.data.tasks[:2], unseen_tasks=[]),
                  msf=replace(tiny_cfg.msf, steps=4, eval_every=4), ist=replace(tiny_cfg.ist, steps=2, eval_every=2))
    out = cfg.out
    run_pt(cfg)
    (out / "msf.partial").mkdir()
    (out / "msf.partial" / "history.jsonl").write_text('{"step": 1}\n')  # an interrupted earlier run
    first = run_msf(cfg)
    assert first["checkpoint"] == str(out / "msf") and not (out / "msf.partial").exists()
    assert len(list(out.glob("msf.interrupted-*/history.jsonl"))) == 1  # kept, not deleted
    ae = out / "msf" / "autoencoder.safetensors"
    digest, history = _digest(ae), (out / "msf" / "history.jsonl").read_text()
    with caplog.at_level("INFO"):
        assert run_msf(cfg) == first
    assert "MSF already trained with these inputs" in caplog.text
    with pytest.raises(ConfigError, match=r"msf\.steps: 4 -> 2"):
        run_msf(replace(cfg, msf=replace(cfg.msf, steps=2, eval_every=2)))
    assert _digest(ae) == digest and (out / "msf" / "history.jsonl").read_text() == history
    assert not (out / "msf.partial").exists()  # refused before any work

    done = run_ist(cfg)
    results = (out / "ist" / "results.jsonl").read_text()
    again = run_ist(cfg)  # same inputs: nothing retrained
    assert sorted((r["job_id"], r["seconds"]) for r in again) == sorted((r["job_id"], r["seconds"]) for r in done)
    with pytest.raises(ConfigError, match=r"ist\.steps: 2 -> 3"):
        run_ist(replace(cfg, ist=replace(cfg.ist, steps=3)))
    assert (out / "ist" / "results.jsonl").read_text() == results


@pytest.mark.slow
def test_a_killed_msf_goes_on_from_its_last_checkpoint_as_if_never_stopped(tiny_cfg, tmp_path):
    """`ipt msf` killed for real (os._exit after step 5, as on an OOM kill) and run again: it goes on
    from the step-4 checkpoint in msf.partial/ (AE, optimiser, schedule, sampler, keep-best state) and
    its losses and final autoencoder equal an uninterrupted run's. Nothing is moved aside or lost; in
    MLflow the continuing run holds every step and supersedes the killed run (left RUNNING -> KILLED)."""
    import json
    import os
    import subprocess
    import sys

    import torch
    import yaml
    from safetensors.torch import load_file

    from ipt_dist.config import config_to_dict
    from ipt_dist.stages.msf import RESUME_FILE, run_msf
    from ipt_dist.testing.faults import MSF_CRASH_ENV

    def config(out):
        cfg = replace(tiny_cfg, output_dir=str(out), msf=replace(tiny_cfg.msf, steps=6, eval_every=3,
                                                                 checkpoint_every=2, log_every=1))
        for i, t in enumerate(cfg.data.tasks):  # stage-0 prompts (no provenance: MSF warns and goes on)
            save_prompt(prompt_path(out / "prompts", t), torch.randn(4, 64, generator=torch.Generator().manual_seed(i)),
                        backbone="tiny-t5")
        return cfg

    reference = run_msf(config(tmp_path / "ref"))
    cfg = config(tmp_path / "killed")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = replace(cfg, tracking=replace(cfg.tracking, enabled=True, tracking_uri=uri, experiment="resume"))
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg)))
    killed = subprocess.run([sys.executable, "-m", "ipt_dist.cli", "msf", "--config", str(path)],
                            env={**os.environ, MSF_CRASH_ENV: "5"}, capture_output=True, text=True, timeout=600,
                            check=False)
    assert killed.returncode == 1, killed.stderr[-2000:]
    partial = cfg.out / "msf.partial"
    assert torch.load(partial / RESUME_FILE, weights_only=False)["step"] == 4  # checkpoints at 2, 3 (eval), 4
    assert [r["step"] for r in read_jsonl(partial / "history.jsonl")] == [1, 2, 3, 4]

    other = replace(cfg, msf=replace(cfg.msf, eval_max_examples=3))  # not an input, but keep-best compares dev
    with pytest.raises(ConfigError, match=r"msf.eval_max_examples=None; continuing with 3 .*Fix: --set"):
        run_msf(other)
    from mlflow import MlflowClient

    from ipt_dist.cli import main

    assert main(["msf", "--config", str(path)]) == 0  # as the user would: the same command again
    resumed = json.loads((cfg.out / "msf" / "summary.json").read_text())
    assert resumed["best_dev"] == reference["best_dev"] and resumed["best_step"] == reference["best_step"]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("resume").experiment_id], order_by=["start_time"])
    killed_run, new_run = runs
    assert killed_run.info.status == "KILLED" and new_run.info.status == "FINISHED"
    assert killed_run.data.tags["ipt.superseded_by"] == new_run.info.run_id
    assert new_run.data.tags["ipt.continues_run"] == killed_run.info.run_id
    assert new_run.data.tags["resumed_from_step"] == "4"
    assert [m.step for m in client.get_metric_history(new_run.info.run_id, "loss")] == list(range(1, 7))
    got, ref = (read_jsonl(d / "msf" / "history.jsonl") for d in (cfg.out, tmp_path / "ref"))
    assert [r["step"] for r in got] == list(range(1, 7))  # steps 5-6 once each, not twice
    for a, b in zip(got, ref):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6) and a["lr"] == b["lr"]
    for k, v in load_file(str(tmp_path / "ref" / "msf" / "autoencoder.safetensors")).items():
        torch.testing.assert_close(load_file(str(cfg.out / "msf" / "autoencoder.safetensors"))[k], v)
    assert not (cfg.out / "msf" / RESUME_FILE).exists() and not list(cfg.out.glob("msf.interrupted-*"))
    summary = json.loads((cfg.out / "msf" / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["resumed_from_step"] == 4  # its "seconds" are from step 4 on
