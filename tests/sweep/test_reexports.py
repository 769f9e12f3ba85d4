"""`ipt_dist.distributed.sweep` and `ipt_dist.distributed.pack_progress` keep every name imported
from them before the split, for one release, as the very objects of their new homes."""

from __future__ import annotations


def test_old_sweep_module_reexports_the_new_objects():
    from ipt_dist.distributed import cluster, fanout
    from ipt_dist.distributed import sweep as old
    from ipt_dist.sweep import grid, jobs, packing, plan, progress, results, worker
    from ipt_dist.testing import faults

    assert set(old.__all__) <= set(dir(old))
    same = {"run_sweep": fanout.run_sweep, "init_ray": cluster.init_ray, "task_slots": cluster.task_slots,
            "plan_sweep": plan.plan_sweep, "prepare_config": plan.prepare_config, "group_packs": packing.group_packs,
            "pack_cost": packing.pack_cost, "JobSpec": jobs.JobSpec, "SweepPlan": jobs.SweepPlan,
            "make_job": jobs.make_job, "sweep_dir": jobs.sweep_dir, "STAGES": jobs.STAGES,
            "IST_SETTINGS": jobs.IST_SETTINGS, "expand_ipt_pt_jobs": grid.expand_ipt_pt_jobs,
            "SweepResult": results.SweepResult, "run_pack": worker.run_pack, "PackRunner": worker.PackRunner,
            "_Progress": progress.SweepProgress, "_load_param": results.load_param,
            "_check_data": plan.check_data_files}
    for name, obj in same.items():
        assert getattr(old, name) is obj, name
    assert old.CRASH_ENV == faults.SWEEP_CRASH_ENV == "IPT_SWEEP_TEST_CRASH_ONCE"  # the tests' env var


def test_old_pack_progress_module_reexports_the_new_objects():
    from ipt_dist.distributed import pack_progress as old
    from ipt_dist.sweep import progress

    for name in ("PackProgressBoard", "ThrottledProgress", "describe_packs", "fmt_secs", "pack_eta", "partial_jobs"):
        assert getattr(old, name) is getattr(progress, name), name
