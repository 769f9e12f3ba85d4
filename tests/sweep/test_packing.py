"""Packing, without Ray: packs share a pack key, are balanced, fill the task slots, go longest first
and taper at the end."""

from __future__ import annotations


def test_packs_are_balanced_fill_the_slots_and_go_longest_first():
    """No short last pack idling a slot at the end, no idle slot while one pack holds many jobs."""
    from ipt_dist.sweep.jobs import JobSpec
    from ipt_dist.sweep.packing import group_packs

    def jobs(n, kind="ist", d=4):
        return [JobSpec(job_id=f"{kind}{d}-{i}", stage="ist", role=kind, kind=kind, task=f"t{i:03d}", seen=True,
                        data_seed=42, lr=0.1, d=d, decoder="msf") for i in range(n)]

    ist, evals = jobs(40), jobs(6, "msf_eval")
    packs = group_packs(ist + evals, 32)
    assert [len(p) for p in packs] == [20, 20, 6]  # not 32 + 8
    assert sorted(j.job_id for p in packs for j in p) == sorted(j.job_id for j in ist + evals)
    assert all(len({j.pack_key() for j in p}) == 1 for p in packs)
    # fewer packs than slots: the largest is halved until every slot has one
    assert sorted(len(p) for p in group_packs(jobs(40), 64, slots=4)) == [10, 10, 10, 10]
    assert [len(p) for p in group_packs(jobs(3), 64, slots=8)] == [1, 1, 1]
    # the cost decides the order: six evaluation-only jobs go after twenty training jobs' pack
    steps = {"ist": 100, "msf_eval": 0}
    packs = group_packs(jobs(20) + jobs(30, "msf_eval"), 32, cost=lambda p: len(p) * (steps[p[0].kind] + 1))
    assert [(p[0].kind, len(p)) for p in packs] == [("ist", 20), ("msf_eval", 30)]
    assert group_packs(ist, 32) == group_packs(list(reversed(ist)), 32)  # deterministic
    # more big packs than slots: the last wave of big packs comes in halves, after the full ones
    assert [len(p) for p in group_packs(jobs(256), 32, slots=2)] == [32] * 6 + [16] * 4
    assert [len(p) for p in group_packs(jobs(64), 32, slots=2)] == [32, 32]  # one wave: nothing to taper


def test_packs_go_in_slices_of_ascending_d_longest_first_within_each():
    """A sweep read or stopped part way holds whole low-d slices: every pack of d = 5 (IST of every
    decoder and the evaluation-only settings 1-2) before any of d = 50, then d = 250; PT (no d) first."""
    from ipt_dist.sweep.jobs import JobSpec
    from ipt_dist.sweep.packing import group_packs

    def jobs(n, kind, d, decoder="msf"):
        return [JobSpec(job_id=f"{kind}{d}{decoder}-{i}", stage="ist", role=kind, kind=kind, task=f"t{i:03d}",
                        seen=True, data_seed=42, lr=0.1, d=d, decoder=decoder) for i in range(n)]

    mixed = [j for d in (250, 5, 50) for j in jobs(4, "msf_eval", d) + jobs(8, "ist", d) + jobs(8, "ist", d, "random")]
    steps = {"ist": 32, "msf_eval": 0}
    packs = group_packs(mixed, 4, slots=2, cost=lambda p: len(p) * (steps[p[0].kind] + 1))
    ds = [p[0].d for p in packs]
    assert ds == sorted(ds) and set(ds) == {5, 50, 250}  # str order would put 250 before 5
    for d in (5, 50):  # within a slice: training packs first, the evaluation-only pack last
        assert [p[0].kind for p in packs if p[0].d == d] == ["ist"] * 4 + ["msf_eval"]
    assert sorted(j.job_id for p in packs for j in p) == sorted(j.job_id for j in mixed)
    # IPT-initialised PT jobs carry a d but share the PT pack key: their pack is in the first slice
    ipt_pt = [JobSpec(job_id=f"p{i}", stage="ist", role="ipt_pt", kind="pt", task=f"t{i:03d}", seen=True,
                      data_seed=42, lr=0.1, d=250, decoder="msf") for i in range(2)]
    assert next(p[0].kind for p in group_packs(mixed + ipt_pt, 4, slots=2, cost=len)) == "pt"
    # the taper halves the last slice's last big packs only
    assert [len(p) for p in packs if p[0].d == 250] == [4, 4, 2, 2, 2, 2, 4]
