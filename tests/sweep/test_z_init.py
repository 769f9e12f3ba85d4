"""`ist.z_init: centroid`: z starts at the mean code of the decoder's training prompts (MSF: mean
Enc(P_i); PCA: its mean prompt, code ~0) plus the usual N(0, init_std) noise; the random decoder,
which has no encoder, starts at N(0, init_std) either way. Measured on the issue-14 run (d = 250):
from N(0, 0.02) the MSF decoder's prompt scored 0 on every task after 32 steps at any lr, while
training codes lie at norm ~10 (BENCHMARKS.md, IST calibration). Only IST jobs change ids."""

from __future__ import annotations

from dataclasses import asdict, replace

import pytest
import torch

from ipt_dist.config import ConfigError, load_config
from tests.sweep.fixtures import SEEN, sweep_cfg


def test_z_init_is_checked():
    with pytest.raises(ConfigError, match="ist.z_init: must be one of normal, centroid, got 'mean'"):
        load_config(None, ["ist.z_init=mean"])


def test_only_ist_job_ids_change(stage0, tmp_path):
    from ipt_dist.sweep.plan import plan_sweep

    plain = plan_sweep(sweep_cfg(stage0, tmp_path / "a", "sweep.random_decoder=true", "sweep.pca_decoder=true",
                                 tracking=False), "ist")
    centred = plan_sweep(sweep_cfg(stage0, tmp_path / "a", "sweep.random_decoder=true", "sweep.pca_decoder=true",
                                   "ist.z_init=centroid", tracking=False), "ist")
    ids = {j.job_id for j in plain.jobs}
    assert [j.role for j in plain.jobs] == [j.role for j in centred.jobs]
    changed = {(j.role, j.decoder) for j in centred.jobs if j.job_id not in ids}
    kept = {(j.role, j.decoder) for j in centred.jobs if j.job_id in ids}
    assert changed == {("ist", "msf"), ("ist", "random"), ("ist", "pca")}
    assert kept == {("msf_eval", "msf")}  # settings 1-2 train no z


def test_ist_starts_at_the_mean_code_of_the_msf_training_prompts(stage0, tmp_path):
    from ipt_dist.artifacts import load_msf_checkpoint, load_task_prompts
    from ipt_dist.config import config_to_dict
    from ipt_dist.sweep.inputs import PackInputs
    from ipt_dist.sweep.plan import plan_sweep
    from ipt_dist.sweep.worker import _run_pack
    from ipt_dist.train.packed import Job, init_params

    cfg = sweep_cfg(stage0, tmp_path, "sweep.random_decoder=true", "sweep.pca_decoder=true", "ist.z_init=centroid",
                    "ist.steps=1", "ist.eval_every=1", tracking=False)
    plan = plan_sweep(cfg, "ist")
    inputs = PackInputs(plan)
    first = {}
    for j in plan.jobs:
        if j.role == "ist":
            first.setdefault(j.decoder, j)
    ae, meta = load_msf_checkpoint(stage0["ckpt"])
    prompts = load_task_prompts(stage0["prompts"], SEEN, meta["prompt_len"], meta["hidden"])
    with torch.no_grad():
        codes = ae.encode(prompts)
    expected = codes.mean(0)
    assert expected.abs().max() > 10 * cfg.ist.init_std  # else the test could not tell the inits apart

    shared = inputs.shared_part(first["msf"])
    torch.testing.assert_close(shared["z_origin"], expected)
    assert inputs.shared_part(first["random"])["z_origin"] is None
    pca_origin = inputs.shared_part(first["pca"])["z_origin"]
    assert pca_origin.abs().max() < 1e-4  # the PCA code of the mean prompt

    # Through the pack worker: with lr ~0 the returned z is where it started.
    job = replace(first["msf"], lr=1e-12)
    [out] = _run_pack(config_to_dict(cfg), [asdict(job)], shared, None, None)
    noise = init_params([Job(job_id=job.job_id, task=job.task, kind="ist", lr=job.lr, seed=job.data_seed)],
                        (meta["d"],), cfg.ist.init_std)[0]
    torch.testing.assert_close(out["param"], expected + noise, atol=1e-6, rtol=0)
    assert out["record"]["z_init"] == "centroid"


def test_single_stage_ist_starts_there_too(stage0, tmp_path):
    from safetensors.torch import load_file

    from ipt_dist.artifacts import load_msf_checkpoint, load_task_prompts
    from ipt_dist.stages.ist import run_ist
    from ipt_dist.train.packed import Job, init_params
    from tests.sweep.fixtures import base_overrides

    cfg = load_config(None, base_overrides(tmp_path, stage0["demo_dir"]) + [
        f"msf.prompts_dir={stage0['prompts']}", f"ist.msf_checkpoint={stage0['ckpt']}", "ist.z_init=centroid",
        "ist.lr=1e-12", "ist.steps=1", "ist.eval_every=1", f"data.tasks=[{SEEN[0]}]", "data.unseen_tasks=[]"])
    [rec] = run_ist(cfg)
    assert rec["z_init"] == "centroid"
    ae, meta = load_msf_checkpoint(stage0["ckpt"])
    with torch.no_grad():
        expected = ae.encode(load_task_prompts(stage0["prompts"], meta["tasks"], meta["prompt_len"],
                                               meta["hidden"])).mean(0)
    noise = init_params([Job(job_id=rec["job_id"], task=SEEN[0], kind="ist", seed=cfg.ist.seed)], (meta["d"],),
                        cfg.ist.init_std)[0]
    z = load_file(str(tmp_path / "ist" / "z" / f"{rec['job_id']}.safetensors"))["z"]
    torch.testing.assert_close(z, expected + noise, atol=1e-6, rtol=0)
