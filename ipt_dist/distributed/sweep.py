"""Moved: the sweep is split into `ipt_dist.sweep` (plain Python: jobs, plan, grid, packing, inputs,
worker, results, progress, smoke) and `ipt_dist.distributed` (`cluster`: Ray init, resource checks,
task slots; `fanout`: the task and actor pools and `run_sweep`). This module re-exports the names
imported from it before the split, for one release; new code imports from their new homes.
"""

from __future__ import annotations

from ipt_dist.config import IPTConfig
from ipt_dist.distributed.cluster import check_resources as _check_resources  # noqa: F401
from ipt_dist.distributed.cluster import init_ray, task_slots
from ipt_dist.distributed.fanout import HEARTBEAT_S, WAIT_S, run_sweep  # noqa: F401
from ipt_dist.sweep.grid import expand_ipt_pt_jobs
from ipt_dist.sweep.jobs import (
    IST_DECODERS,
    IST_SETTINGS,
    STAGES,
    DecoderInfo,
    JobSpec,
    SweepPlan,
    make_job,
    sweep_dir,
)
from ipt_dist.sweep.packing import group_packs, pack_cost
from ipt_dist.sweep.plan import check_data_files as _check_data  # noqa: F401
from ipt_dist.sweep.plan import plan_sweep, prepare_config
from ipt_dist.sweep.progress import SweepProgress as _Progress  # noqa: F401
from ipt_dist.sweep.results import SweepResult
from ipt_dist.sweep.results import load_param as _load_param  # noqa: F401
from ipt_dist.sweep.smoke import prepare_smoke as _prepare_smoke
from ipt_dist.sweep.worker import PackRunner, run_pack
from ipt_dist.testing.faults import SWEEP_CRASH_ENV as CRASH_ENV

__all__ = [
    "CRASH_ENV",
    "IST_DECODERS",
    "IST_SETTINGS",
    "STAGES",
    "DecoderInfo",
    "JobSpec",
    "PackRunner",
    "SweepPlan",
    "SweepResult",
    "expand_ipt_pt_jobs",
    "group_packs",
    "init_ray",
    "make_job",
    "pack_cost",
    "plan_sweep",
    "prepare_config",
    "prepare_smoke",
    "run_pack",
    "run_sweep",
    "sweep_dir",
    "task_slots",
]


def prepare_smoke(cfg: IPTConfig, stage: str) -> IPTConfig:
    """`ipt_dist.sweep.smoke.prepare_smoke` with this release's PT sweep runner (the old signature)."""
    return _prepare_smoke(cfg, stage, run_sweep)
