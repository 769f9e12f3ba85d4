"""`--smoke-test` of the sweeps: build what a tiny IST sweep needs on this machine, the stage-0 PT
sweep and one MSF checkpoint per d. This is the smoke path: it may run a driver (`run_msf`).

The PT sweep itself runs on Ray; the caller (`ipt_dist.distributed.fanout.run_sweep`) hands its
own `run_sweep` in, so this module imports no Ray.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from ipt_dist.config import ConfigError, IPTConfig, config_from_dict, config_to_dict
from ipt_dist.sweep.jobs import prompts_dir
from ipt_dist.sweep.plan import prepare_config
from ipt_dist.sweep.results import SweepResult

__all__ = ["prepare_smoke"]

log = logging.getLogger(__name__)


def prepare_smoke(cfg: IPTConfig, stage: str, run_sweep: Callable[[IPTConfig, str], SweepResult]) -> IPTConfig:
    """Build what a smoke IST sweep needs: the stage-0 PT sweep (every task x data seed x lr, as
    `ipt quickstart` runs it: the PT denominator of every draw, and the prompt files) and one MSF
    checkpoint per d (`run_msf`, single process). Both skip work already on disk, so a second
    smoke run trains nothing. Returns the resolved config with `sweep.dims` pointing at them.

    Args:
        run_sweep: runs the PT sweep (`run_sweep(cfg, "pt")`).
    Raises:
        ConfigError: msf.prompts_dir set elsewhere than where the PT sweep writes the prompts.
        StageFailed: some stage-0 PT jobs failed.
    """
    cfg = prepare_config(cfg)
    if stage == "pt":
        return cfg
    from ipt_dist.stages.msf import run_msf

    out = Path(cfg.output_dir)
    if prompts_dir(cfg) != out / "prompts":
        raise ConfigError(f"--smoke-test writes the stage-0 prompts to {out / 'prompts'} (PT sweep), but "
                          f"msf.prompts_dir is {cfg.msf.prompts_dir}: unset it for a smoke test")
    pt = run_sweep(cfg, "pt")  # prompt files already there (from an earlier smoke run or ipt pt) are kept
    if pt.jobs_failed:
        from ipt_dist.errors import StageFailed

        raise StageFailed(f"smoke test: {pt.jobs_failed} stage-0 PT jobs failed ({pt.sweep_dir / 'failures.jsonl'}); "
                          "run the same command again to retry them")
    dims = cfg.sweep.dims or {cfg.msf.d: str(out / f"msf_d{cfg.msf.d}")}
    for d, path in sorted(dims.items()):
        ckpt = Path(path)
        if (ckpt / "msf.json").is_file():
            continue
        log.info("smoke test: training MSF d=%d into %s", d, ckpt)
        work = out / "smoke_work" / f"msf_d{d}"
        cfg_d = config_from_dict(config_to_dict(cfg), "smoke msf config")
        cfg_d.output_dir, cfg_d.msf.d, cfg_d.msf.prompts_dir = str(work), d, str(prompts_dir(cfg))
        cfg_d.tracking.enabled = False
        run_msf(cfg_d)
        if ckpt.exists():
            shutil.rmtree(ckpt)
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        (work / "msf").rename(ckpt)
    cfg.sweep.dims = dict(dims)
    return cfg
