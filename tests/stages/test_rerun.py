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
