"""The grid of a sweep, without Ray, data or checkpoints: which jobs each setting, decoder and
baseline adds (docs/sweeps.md), from a config and a decoder's metadata alone."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ipt_dist.config import load_config
from ipt_dist.sweep.grid import expand_ipt_pt_jobs, expand_ist, expand_pt, msf_eval_tasks
from ipt_dist.sweep.jobs import DecoderInfo, SweepPlan, digest
from tests.conftest import tiny_overrides

TRAIN, UNSEEN = ["a", "b", "c"], ["u"]
SEEDS = [42, 7, 9]


def _cfg(*extra: str):
    return load_config(None, tiny_overrides(Path("/grid/run"), Path("/grid/data")) + [
        f"sweep.data_seeds=[{', '.join(map(str, SEEDS))}]", "sweep.lrs=[0.1, 0.3]", "data.data_seed=42",
        "msf.prompts_dir=/grid/prompts", *extra])


def _decoders(*dims: int) -> dict[int, DecoderInfo]:
    out = {}
    for d in dims:
        meta = {"d": d, "prompt_len": 4, "hidden": 64, "mid_dim": 32, "tasks": TRAIN}
        out[d] = DecoderInfo(d=d, path=Path(f"/grid/msf_d{d}"), meta=meta, fingerprint=digest(meta))
    return out


def test_pt_grid_is_every_task_seed_and_lr():
    jobs = expand_pt(_cfg(), TRAIN, UNSEEN)
    assert len(jobs) == 4 * 3 * 2 and {j.kind for j in jobs} == {"pt"}
    assert [j.seen for j in jobs if j.task == "u"] == [False] * 6 and all(j.seen for j in jobs if j.task != "u")
    assert len({j.job_id for j in jobs}) == len(jobs)


def test_each_setting_adds_its_tasks_and_draws():
    cfg = _cfg()
    jobs, n_ipt = expand_ist(cfg, TRAIN, UNSEEN, _decoders(4), same=42)
    per = Counter(j.setting for j in jobs)
    assert per == {"msf_seen": 3, "msf_unseen": 1,  # one per task, on the PT/MSF draw, no lr
                   "ist_seen_same": 3 * 2,  # training tasks x lrs, draw 42
                   "ist_seen_new": 3 * 2 * 2,  # training tasks x the other draws x lrs
                   "ist_unseen": 1 * 3 * 2}  # unseen task x every draw x lrs
    assert {j.data_seed for j in jobs if j.setting in ("msf_seen", "msf_unseen", "ist_seen_same")} == {42}
    assert {j.data_seed for j in jobs if j.setting == "ist_seen_new"} == {7, 9}
    assert all(j.lr is None for j in jobs if j.kind == "msf_eval") and n_ipt == 0
    assert msf_eval_tasks(cfg, TRAIN, UNSEEN) == TRAIN + UNSEEN


def test_baselines_dims_and_ipt_pt_multiply_the_ist_grid():
    cfg = _cfg("sweep.random_decoder=true", "sweep.ipt_init_pt=true", "sweep.ist_lrs=[0.5]",
               "sweep.settings=[ist_seen_same, ist_unseen]")
    dec = _decoders(2, 8)
    jobs, n_ipt = expand_ist(cfg, TRAIN, UNSEEN, dec, same=42)
    ist = [j for j in jobs if j.role == "ist"]
    pairs = 3 + 1 * 3  # (task, draw) of the IST grid
    assert Counter((j.d, j.decoder) for j in ist) == {(2, "msf"): pairs, (2, "random"): pairs,
                                                      (8, "msf"): pairs, (8, "random"): pairs}
    assert {j.lr for j in ist} == {0.5}  # sweep.ist_lrs, not sweep.lrs
    controls = [j for j in jobs if j.role == "pt_control"]
    assert len(controls) == pairs and {j.lr for j in controls} == {0.3}  # pt.lr of tiny_overrides
    assert n_ipt == pairs * len(dec)
    # phase 2: one IPT-initialised PT per (task, draw, d) with IST results, from the best-dev lr's z*
    plan = SweepPlan(stage="ist", cfg=cfg, sweep_dir=Path("/grid/run/ist_sweep"), train_tasks=TRAIN,
                     unseen_tasks=UNSEEN, same_seed=42, jobs=jobs, decoders=dec, expected_ipt_pt=n_ipt)
    done = [j for j in ist if j.decoder == "msf" and j.d == 2 and j.task == "a"]
    records = [{"job_id": j.job_id, "role": "ist", "decoder": "msf", "task": j.task, "data_seed": j.data_seed,
                "d": j.d, "seen": j.seen, "best_dev": 0.5, "lr": j.lr} for j in done]
    ipt = expand_ipt_pt_jobs(plan, records)
    assert [(j.task, j.data_seed, j.d, j.z_source) for j in ipt] == [("a", 42, 2, done[0].job_id)]
    assert expand_ipt_pt_jobs(plan, records + [{**records[0], "job_id": "ist-not-in-this-grid"}]) == ipt
