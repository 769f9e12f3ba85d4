"""Planning a sweep, without Ray: job ids, the grid of every setting and baseline, and every user
error (bad seeds, settings, tasks, MSF checkpoints of another draw or backbone, missing stage-0
prompts or PT denominators) raised before any work. `stage0` (tests/sweep/fixtures.py) trains the
prompts and the MSF checkpoint once, single process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ipt_dist.config import ConfigError, load_config
from ipt_dist.data.tasks import DataError
from tests.sweep.fixtures import LRS, N_JOBS, SEEN, UNSEEN, sweep_cfg

ROOT = Path(__file__).resolve().parents[2]


def test_job_ids_are_stable_and_content_derived(stage0, tmp_path):
    from ipt_dist.sweep.packing import group_packs
    from ipt_dist.sweep.plan import plan_sweep

    a = plan_sweep(sweep_cfg(stage0, tmp_path / "a", tracking=False), "ist")
    b = plan_sweep(sweep_cfg(stage0, tmp_path / "b", "sweep.pack_size=1", tracking=False), "ist")
    assert len(a.jobs) == N_JOBS and [j.job_id for j in a.jobs] == [j.job_id for j in b.jobs]
    c = plan_sweep(sweep_cfg(stage0, tmp_path / "a", "sweep.lrs=[0.3, 2.0]", tracking=False), "ist")
    ids_a = {j.job_id: j for j in a.jobs}
    for j in c.jobs:
        assert (j.job_id in ids_a) == (j.lr in (None, 0.3))
    d = plan_sweep(sweep_cfg(stage0, tmp_path / "a", "ist.steps=12", tracking=False), "ist")
    changed = {j.role for j in d.jobs if j.job_id not in ids_a}
    assert changed == {"ist"}  # settings 1-2 do not train: their ids do not depend on ist.steps
    packs = group_packs(a.jobs, 8)
    assert sorted(len(p) for p in packs) == [4, 8, 8, 8]
    for p in packs:
        assert len({j.pack_key() for j in p}) == 1


def test_pca_decoder_adds_ist_jobs_for_settings_3_to_5_with_their_own_ids(stage0, tmp_path):
    """sweep.pca_decoder: the MSF IST grid again with decoder "pca"; its ids digest the training tasks'
    prompt files (and d); prompts changed since MSF read them are refused."""
    import shutil

    from ipt_dist.artifacts import load_prompt, save_prompt
    from ipt_dist.sweep.jobs import IST_SETTINGS
    from ipt_dist.sweep.plan import plan_sweep

    base = plan_sweep(sweep_cfg(stage0, tmp_path / "a", tracking=False), "ist")
    plan = plan_sweep(sweep_cfg(stage0, tmp_path / "a", "sweep.pca_decoder=true", tracking=False), "ist")
    pca = [j for j in plan.jobs if j.decoder == "pca"]
    msf_ist = [j for j in base.jobs if j.role == "ist"]
    assert len(pca) == len(msf_ist) == 9 + 9 + 6 and {j.setting for j in pca} == set(IST_SETTINGS)
    assert all(j.role == j.kind == "ist" and j.msf_run_id is None for j in pca)

    def grid(jobs):
        return sorted((j.setting, j.task, j.data_seed, j.lr, j.d) for j in jobs)

    assert grid(pca) == grid(msf_ist)
    assert len({j.job_id for j in plan.jobs}) == len(plan.jobs) == N_JOBS + len(pca)
    assert {j.job_id for j in base.jobs} <= {j.job_id for j in plan.jobs}  # MSF jobs keep their ids
    assert len({j.pack_key() for j in pca}) == 1 and pca[0].pack_key() not in {j.pack_key() for j in msf_ist}

    # A retrained stage-0 prompt of a training task: the PCA would span other prompts than MSF read,
    # so the comparison would not be like for like: refused (also without msf_seen, which checks it too).
    prompts = tmp_path / "prompts"
    shutil.copytree(stage0["prompts"], prompts)
    p, meta = load_prompt(prompts / "demo_sentiment.safetensors")
    save_prompt(prompts / "demo_sentiment.safetensors", p + 0.01, **meta)
    with pytest.raises(ConfigError, match=r"pca_decoder \(d=4\): the stage-0 prompt files of demo_sentiment "
                                          r"changed since MSF d=4 read them"):
        plan_sweep(sweep_cfg(stage0, tmp_path / "a", "sweep.pca_decoder=true", f"msf.prompts_dir={prompts}",
                             "sweep.settings=[msf_unseen, ist_seen_same, ist_seen_new, ist_unseen]",
                             tracking=False), "ist")

    with pytest.raises(ConfigError, match=r"sweep.pca_decoder \(d=4\) is computed from the stage-0 prompts"):
        plan_sweep(sweep_cfg(stage0, tmp_path / "a", "sweep.pca_decoder=true", "sweep.settings=[ist_seen_same]",
                             f"msf.prompts_dir={tmp_path / 'none'}", tracking=False), "ist")
    with pytest.raises(ConfigError, match="sweep.pca_decoder needs an IST setting"):
        plan_sweep(sweep_cfg(stage0, tmp_path / "a", "sweep.pca_decoder=true", "sweep.settings=[msf_seen]",
                             tracking=False), "ist")


def test_ist_lrs_set_the_ist_grid_apart_from_pt(stage0, tmp_path):
    from ipt_dist.sweep.plan import plan_sweep

    plan = plan_sweep(sweep_cfg(stage0, tmp_path, "sweep.ist_lrs=[0.5, 2.0]", tracking=False), "ist")
    ist = [j for j in plan.jobs if j.role == "ist"]
    assert {j.lr for j in ist} == {0.5, 2.0} and len(ist) == 2 * (9 + 9 + 6) // 3
    pt = plan_sweep(sweep_cfg(stage0, tmp_path, "sweep.ist_lrs=[0.5]", tracking=False), "pt")
    assert {j.lr for j in pt.jobs} == set(LRS)
    with pytest.raises(ConfigError, match="sweep.ist_lrs: every learning rate must be > 0"):
        sweep_cfg(stage0, tmp_path, "sweep.ist_lrs=[-1.0]", tracking=False)


def test_ist_sweep_without_a_pt_denominator_on_some_draw_is_refused_before_any_job(stage0, tmp_path):
    """Every IST/MSF-eval job on draw s is divided by PT on the same task and draw: a sweep whose
    PT results miss a (task, draw) fails at planning, listing the pairs and the fix."""
    from ipt_dist.artifacts import append_jsonl
    from ipt_dist.sweep.plan import plan_sweep

    only_42 = [r for r in stage0["pt"] if r["data_seed"] == 42 or r["task"] == "demo_topic"]
    for r in only_42:
        append_jsonl(tmp_path / "pt" / "results.jsonl", r)
    cfg = sweep_cfg(stage0, tmp_path, tracking=False, pt_results=False)
    with pytest.raises(ConfigError) as err:
        plan_sweep(cfg, "ist", check_data=False)
    msg = str(err.value)
    # settings 4 (seen tasks) and 5 (the unseen task) run on draw 13; demo_topic has PT on it
    assert "3 (task, draw) pairs of this sweep have no stage-0 PT result" in msg
    assert "draws [13]: demo_copy_first, demo_parity, demo_sentiment" in msg and "demo_topic" not in msg
    assert "Fix: run the PT sweep first with the same sweep.data_seeds [42, 13] and output_dir" in msg
    assert not (tmp_path / "ist_sweep").exists()  # nothing ran, nothing was written
    # Settings that use the PT/MSF draw only need nothing more.
    plan = plan_sweep(sweep_cfg(stage0, tmp_path, "sweep.settings=[msf_seen, ist_seen_same]", tracking=False,
                                pt_results=False), "ist", check_data=False)
    assert {j.data_seed for j in plan.jobs} == {42}
    # The prompt files alone (one draw each) cannot pair draw 13 either.
    with pytest.raises(ConfigError, match="have no stage-0 PT result"):
        plan_sweep(sweep_cfg(stage0, tmp_path / "empty", tracking=False, pt_results=False), "ist",
                   check_data=False)
    plan = plan_sweep(sweep_cfg(stage0, tmp_path / "full", tracking=False), "ist", check_data=False)
    assert len(plan.jobs) == N_JOBS and {(r["task"], r["data_seed"]) for r in plan.pt_records} == {
        (t, s) for t in SEEN + UNSEEN for s in (42, 13)}


@pytest.mark.parametrize("extra, match", [
    (["data.tasks=[demo_sentiment, no_such_task]"], "no_such_task"),
    (["sweep.dims={4: CKPT, 8: /nonexistent/msf_d8}"], r"sweep.dims\[8\]: no MSF checkpoint"),
    (["sweep.dims={8: CKPT}"], "has d=4, not 8"),
    (["pt.prompt_len=6"], "pt.prompt_len: checkpoint 4 vs config 6"),
    (["sweep.data_seeds=[42]"], "ist_seen_new"),
    (["sweep.data_seeds=[13, 42]"], r"data_seeds\[0\] \(13\) must be the data seed"),
    (["data.unseen_tasks=[]"], "no unseen tasks"),
    (["msf.prompts_dir=/nonexistent/prompts"], "need stage-0 prompts"),
    (["sweep.pack_sise=4"], "did you mean 'pack_size'"),
    (["sweep.settings=[ist_seen]"], "is not one of"),
])
def test_bad_sweeps_fail_before_any_work(stage0, tmp_path, extra, match):
    from ipt_dist.sweep.plan import plan_sweep

    extra = [e.replace("CKPT", str(stage0["ckpt"])) for e in extra]
    with pytest.raises((ConfigError, DataError), match=match):
        plan_sweep(sweep_cfg(stage0, tmp_path, *extra, tracking=False), "ist")


# ----------------------------------------------------------------------------- provenance (no Ray)


def test_decoder_of_another_draw_is_refused_listing_every_mismatch(stage0, tmp_path):
    """MSF trained on seed 42; a sweep whose setting 3 draws seed 13 and whose 'new data' holds 42:
    one error naming the seed, the digests, setting 4 and the backbone field, with the fix."""
    from ipt_dist.sweep.plan import plan_sweep

    cfg = sweep_cfg(stage0, tmp_path, "data.data_seed=13", "sweep.data_seeds=[13, 42]", "backbone.dtype=bfloat16",
                    tracking=False)
    with pytest.raises(ConfigError) as err:
        plan_sweep(cfg, "ist")
    msg = str(err.value)
    assert "sweep.dims[4]: the MSF checkpoint" in msg and "(4 mismatches, checkpoint value vs config value)" in msg
    assert "data.data_seed: checkpoint 42 vs config 13 (setting 3's draw)" in msg
    assert "training data (digest of the train split) differs for 3 of 3 tasks: demo_sentiment (checkpoint" in msg
    assert "draw 42 is among setting 4's new draws (sweep.data_seeds[1:] = [42])" in msg
    assert "backbone.dtype: checkpoint 'float32' vs config 'bfloat16'" in msg
    assert "Fix: train MSF for d=4 on setting 3's draw" in msg and "sweep.data_seeds[0] = 13" in msg


@pytest.mark.parametrize("extra, match", [
    (["backbone.chat_template=true"], "backbone.chat_template: checkpoint False vs config True"),
    (["data.task_prefix=false"], "data.task_prefix: checkpoint True vs config False"),
    (["data.train_size=5"], "data.train_size: checkpoint 6 vs config 5"),
])
def test_decoder_of_another_backbone_or_tokenisation_is_refused(stage0, tmp_path, extra, match):
    from ipt_dist.sweep.plan import plan_sweep

    with pytest.raises(ConfigError, match=match):
        plan_sweep(sweep_cfg(stage0, tmp_path, *extra, tracking=False), "ist")


def test_decoder_is_refused_when_a_data_file_changed_under_the_same_seed(stage0, tmp_path):
    import shutil

    from ipt_dist.sweep.plan import plan_sweep

    data = tmp_path / "data"
    shutil.copytree(stage0["demo_dir"], data)
    cfg = sweep_cfg(stage0, tmp_path, f"data.data_dir={data}", tracking=False)
    assert len(plan_sweep(cfg, "ist").jobs) == N_JOBS  # a copy of the same data is the same data
    train = data / "demo_topic" / "train.jsonl"
    rows = [json.loads(x) for x in train.read_text().splitlines()]
    train.write_text("".join(json.dumps({**r, "input": r["input"] + " again"}) + "\n" for r in rows))
    with pytest.raises(ConfigError, match=r"differs for 1 of 3 tasks: demo_topic \(checkpoint \w+ vs config \w+\)"):
        plan_sweep(cfg, "ist")


def test_settings_1_2_refuse_prompts_of_another_draw_or_changed_since_msf(stage0, tmp_path):
    import shutil

    from ipt_dist.artifacts import load_prompt, prompt_path, save_prompt
    from ipt_dist.provenance import prompt_provenance
    from ipt_dist.stages.common import load_raw
    from ipt_dist.sweep.plan import plan_sweep

    prompts = tmp_path / "prompts"
    shutil.copytree(stage0["prompts"], prompts)
    cfg = sweep_cfg(stage0, tmp_path, f"msf.prompts_dir={prompts}", tracking=False)
    p, meta = load_prompt(prompt_path(prompts, "demo_topic"))
    save_prompt(prompt_path(prompts, "demo_topic"), p + 1.0, **{k: v for k, v in meta.items()
                                                               if k not in ("prompt_len", "hidden")})
    p, meta = load_prompt(prompt_path(prompts, "demo_copy_first"))
    meta["provenance"] = prompt_provenance(cfg, load_raw(cfg, ["demo_copy_first"], 13)["demo_copy_first"], 13)
    save_prompt(prompt_path(prompts, "demo_copy_first"), p, **{k: v for k, v in meta.items()
                                                              if k not in ("prompt_len", "hidden")})
    with pytest.raises(ConfigError) as err:
        plan_sweep(cfg, "ist")
    msg = str(err.value)
    assert "demo_copy_first: data.data_seed: prompt 13 vs config 42" in msg
    assert "sweep.dims[4]: the stage-0 prompt files of demo_topic changed since MSF read them" in msg


def test_checkpoint_without_provenance_is_refused(stage0, tmp_path):
    import shutil

    from ipt_dist.sweep.plan import plan_sweep

    old = tmp_path / "old_msf"
    shutil.copytree(stage0["ckpt"], old)
    meta = json.loads((old / "msf.json").read_text())
    del meta["provenance"]
    (old / "msf.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match=r"sweep.dims\[4\]: the MSF checkpoint .* records no provenance.*"
                                          r"Fix: retrain MSF for d=4"):
        plan_sweep(sweep_cfg(stage0, tmp_path, f"sweep.dims={{4: {old}}}", tracking=False), "ist")


def test_chat_template_changes_job_ids(stage0, tmp_path):
    """Token ids change with the chat template: jobs with it on are other jobs (not 'already done')."""
    from ipt_dist.sweep.plan import plan_sweep

    off = plan_sweep(sweep_cfg(stage0, tmp_path, tracking=False), "pt")
    on = plan_sweep(sweep_cfg(stage0, tmp_path, "backbone.chat_template=true", tracking=False), "pt")
    assert len(on.jobs) == len(off.jobs) and not {j.job_id for j in on.jobs} & {j.job_id for j in off.jobs}


def test_shipped_sweep_configs_load():
    smoke = load_config(ROOT / "configs" / "sweep_smoke.yaml")
    assert smoke.backbone.name_or_path == "demo-t5" and smoke.sweep.data_seeds[0] == smoke.data.data_seed
    real = load_config(ROOT / "configs" / "ist_sweep.yaml")
    assert real.sweep.num_gpus > 0 and set(real.sweep.settings) == {
        "msf_seen", "msf_unseen", "ist_seen_same", "ist_seen_new", "ist_unseen"}
