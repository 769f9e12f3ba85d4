"""Job ids are content hashes: a sweep directory resumes only while they stay the same. These ids
were computed with the code before the sweep was split into `ipt_dist/sweep/` (main at 88e3fce);
a change here means every existing sweep directory would run again."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ipt_dist.config import load_config
from ipt_dist.sweep.grid import expand_ipt_pt_jobs, expand_ist, expand_pt
from ipt_dist.sweep.jobs import DecoderInfo, JobSpec, SweepPlan, digest, make_job
from tests.conftest import tiny_overrides

TRAIN, UNSEEN = ["demo_sentiment", "demo_topic"], ["demo_copy_first"]


def _grid():
    """PT and IST grids of a fixed config (absolute paths that need not exist: ids hash them)."""
    cfg = load_config(None, tiny_overrides(Path("/pinned/run"), Path("/pinned/data")) + [
        "sweep.data_seeds=[42, 7]", "sweep.lrs=[0.3, 0.1]", "sweep.ipt_init_pt=true", "sweep.random_decoder=true",
        "sweep.pca_decoder=true",
        "sweep.settings=[msf_seen, msf_unseen, ist_seen_same, ist_seen_new, ist_unseen]",
        "msf.prompts_dir=/pinned/prompts"])
    pt = expand_pt(cfg, TRAIN, UNSEEN)
    meta = {"d": 4, "prompt_len": 4, "hidden": 64, "mid_dim": 32, "tasks": TRAIN}
    info = DecoderInfo(d=4, path=Path("/pinned/msf_d4"), meta=meta, fingerprint=digest(meta), msf_run_id="r1")
    ist, n_ipt = expand_ist(cfg, TRAIN, UNSEEN, {4: info}, 42)
    plan = SweepPlan(stage="ist", cfg=cfg, sweep_dir=Path("/pinned/run/ist_sweep"), train_tasks=TRAIN,
                     unseen_tasks=UNSEEN, same_seed=42, jobs=ist, decoders={4: info}, expected_ipt_pt=n_ipt)
    records = [{"job_id": j.job_id, "role": "ist", "decoder": "msf", "task": j.task, "data_seed": j.data_seed,
                "d": 4, "seen": j.seen, "best_dev": j.lr, "lr": j.lr}
               for j in ist if j.role == "ist" and j.decoder == "msf"]
    return pt, ist, n_ipt, expand_ipt_pt_jobs(plan, records)


def _row(j: JobSpec) -> tuple:
    return (j.role, j.task, j.data_seed, j.lr, j.setting, j.decoder, j.job_id)


def test_job_ids_are_those_of_the_sweep_before_the_split():
    pt, ist, n_ipt, ipt = _grid()
    assert (len(pt), len(ist), n_ipt, len(ipt)) == (12, 45, 6, 6)
    assert [_row(j) for j in pt[:3] + pt[-1:]] == [
        ("pt", "demo_sentiment", 42, 0.3, None, None, "pt-92fa3e4e116a06"),
        ("pt", "demo_sentiment", 42, 0.1, None, None, "pt-9ffe8045d2e07c"),
        ("pt", "demo_sentiment", 7, 0.3, None, None, "pt-a92438a6bf3cc9"),
        ("pt", "demo_copy_first", 7, 0.1, None, None, "pt-ce3c2ed8997eb6"),
    ]
    first = {}
    for j in ist:
        first.setdefault((j.role, j.decoder), j)
    assert _row(first[("msf_eval", "msf")]) == (
        "msf_eval", "demo_sentiment", 42, None, "msf_seen", "msf", "msf_eval-74efb6d80d3069")
    assert _row(first[("ist", "msf")]) == ("ist", "demo_sentiment", 42, 0.3, "ist_seen_same", "msf",
                                           "ist-4abe9b24c1ddbb")
    assert _row(first[("ist", "random")]) == ("ist", "demo_sentiment", 42, 0.3, "ist_seen_same", "random",
                                              "ist-dbbdf4c30db009")
    assert _row(first[("ist", "pca")]) == ("ist", "demo_sentiment", 42, 0.3, "ist_seen_same", "pca",
                                           "ist-654c68338e36cd")
    assert _row(first[("pt_control", None)]) == ("pt_control", "demo_copy_first", 7, 0.3, None, None,
                                                 "pt_control-ec33ae7eed55c4")
    assert [_row(j) for j in ipt[:2]] == [
        ("ipt_pt", "demo_copy_first", 7, 0.3, None, "msf", "ipt_pt-313cbdf1185e8b"),
        ("ipt_pt", "demo_copy_first", 42, 0.3, None, "msf", "ipt_pt-281f7c4acba983"),
    ]
    # every id of the grid, in order
    every = "".join(j.job_id for j in pt + ist + ipt)
    assert hashlib.sha1(every.encode()).hexdigest() == "42fc4eafaeb4959c191ea34e46424f30413304d6"


def test_a_per_class_draw_changes_the_ids_and_leaving_it_unset_does_not():
    cfg = load_config(None, tiny_overrides(Path("/pinned/run"), Path("/pinned/data")) + [
        "sweep.data_seeds=[42, 7]", "sweep.lrs=[0.3, 0.1]"])
    per_class = load_config(None, tiny_overrides(Path("/pinned/run"), Path("/pinned/data")) + [
        "sweep.data_seeds=[42, 7]", "sweep.lrs=[0.3, 0.1]", "data.shots_per_class=16", "data.data_seed=42"])
    assert expand_pt(cfg, TRAIN, UNSEEN)[0].job_id == "pt-92fa3e4e116a06"  # as pinned above
    assert {j.job_id for j in expand_pt(per_class, TRAIN, UNSEEN)}.isdisjoint(j.job_id for j in expand_pt(cfg, TRAIN, UNSEEN))
    # pinned with the code before rerun.LATE_FIELDS (96ff193): set, the late fields give these ids
    prefixed = load_config(None, tiny_overrides(Path("/pinned/run"), Path("/pinned/data")) + [
        "sweep.data_seeds=[42, 7]", "sweep.lrs=[0.3, 0.1]", "backbone.answer_prefix=Answer"])
    both = load_config(None, tiny_overrides(Path("/pinned/run"), Path("/pinned/data")) + [
        "sweep.data_seeds=[42, 7]", "sweep.lrs=[0.3, 0.1]", "data.shots_per_class=16", "data.data_seed=42",
        "backbone.answer_prefix=Answer"])
    assert expand_pt(per_class, TRAIN, UNSEEN)[0].job_id == "pt-e0a0da6375860c"
    assert expand_pt(prefixed, TRAIN, UNSEEN)[0].job_id == "pt-efb159905ff033"
    assert expand_pt(both, TRAIN, UNSEEN)[0].job_id == "pt-3cc222298df700"


def test_msf_run_id_is_logged_but_not_part_of_the_id():
    a = make_job({"c": 1}, stage="ist", role="ist", kind="ist", task="t", seen=True, data_seed=1, msf_run_id="a")
    b = make_job({"c": 1}, stage="ist", role="ist", kind="ist", task="t", seen=True, data_seed=1, msf_run_id="b")
    c = make_job({"c": 2}, stage="ist", role="ist", kind="ist", task="t", seen=True, data_seed=1, msf_run_id="a")
    assert a.job_id == b.job_id != c.job_id and a.msf_run_id == "a"
