"""The whole method in one call: stage-0 PT sweep -> distributed MSF per d -> IST sweep -> report.

    ipt quickstart --out runs/quickstart                       # demo tasks, tiny backbone, CPU, minutes
    ipt quickstart --data ../shared/data/tasks --model smollm2-135m --out runs/real

Everything runs on one machine with no cluster and no server: a local Ray instance (or the
cluster in $RAY_ADDRESS / distributed.ray_address), an embedded MLflow store at
<out>/mlflow.db (or tracking.tracking_uri). Every stage is resumable: running the same
command again skips what is done.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from importlib import resources
from pathlib import Path

from ipt_dist.config import IPTConfig, load_config

log = logging.getLogger(__name__)


def quickstart_config_path() -> Path:
    return Path(str(resources.files("ipt_dist") / "configs" / "quickstart.yaml"))


def quickstart_config(out: str | Path, *, config: str | Path | None = None, data: str | None = None,
                      model: str | None = None, overrides: list[str] | None = None) -> IPTConfig:
    """The quickstart config with the command line's choices applied; all paths absolute."""
    out = Path(out).expanduser().resolve()
    items = [f"output_dir={out}", f"tracking.tracking_uri=sqlite:///{out / 'mlflow.db'}"]
    if data:
        items += [f"data.data_dir={Path(data).expanduser().resolve()}", "data.unseen_tasks=[]"]
    if model:
        items.append(f"backbone.name_or_path={model}")
    return load_config(config or quickstart_config_path(), items + list(overrides or []))


def _msf_config(cfg: IPTConfig, d: int) -> IPTConfig:
    """Stage 1 for one intrinsic dimension: its own output dir, the shared prompts and MLflow store."""
    from ipt_dist.tracking import resolve_tracking_uri

    out = Path(cfg.output_dir)
    uri = resolve_tracking_uri(cfg) if cfg.tracking.enabled else cfg.tracking.tracking_uri
    return replace(cfg, output_dir=str(out / f"msf_d{d}"),
                   msf=replace(cfg.msf, d=d, prompts_dir=str(out / "prompts")),
                   tracking=replace(cfg.tracking, run_name=f"msf-d{d}", tracking_uri=uri))


def run_pipeline(cfg: IPTConfig, *, distributed_msf: bool = True) -> dict:
    """Run all stages for `cfg` (its `sweep.dims` keys are the intrinsic dimensions).

    MSF checkpoints go to `<out>/msf_d<d>/msf`; `sweep.dims` values are replaced by them.
    Returns paths and headline numbers.
    """
    from ipt_dist.distributed.sweep import run_sweep
    from ipt_dist.report import log_report_to_mlflow, make_report
    from ipt_dist.tracking import resolve_tracking_uri

    cfg = cfg.validate()
    out = Path(cfg.output_dir)
    dims = sorted(cfg.sweep.dims) or [cfg.msf.d]
    log.info("pipeline: stage 0 (PT sweep) -> MSF for d in %s -> IST sweep -> report, output in %s", dims, out)

    pt = run_sweep(cfg, "pt")
    msf_runs = []
    for d in dims:
        cfg_d = _msf_config(cfg, d)
        if (Path(cfg_d.output_dir) / "msf" / "summary.json").is_file() or (
                Path(cfg_d.output_dir) / "msf_dist" / "summary.json").is_file():
            log.info("pipeline: MSF d=%d already trained in %s", d, cfg_d.output_dir)
            continue
        if distributed_msf:
            from ipt_dist.distributed.msf import run_distributed_msf

            msf_runs.append(run_distributed_msf(cfg_d))
        else:
            from ipt_dist.stages.msf import run_msf
            from ipt_dist.tracking import make_tracker

            tracker = make_tracker(cfg_d, run_name=f"msf-d{d}",
                                   tags={"stage": "msf", "d": d, "backbone": cfg.backbone.name_or_path})
            status = "FAILED"
            try:
                summary = run_msf(cfg_d, tracker=tracker)
                status = "FINISHED"
            finally:
                tracker.end(status)
            msf_runs.append({**summary, "mlflow_run_id": tracker.run_id})
    cfg = replace(cfg, sweep=replace(cfg.sweep, dims={d: str(out / f"msf_d{d}" / "msf") for d in dims}))
    ist = run_sweep(cfg, "ist")
    report = make_report(out)
    parents = [r.parent_run_id for r in (pt, ist) if r.parent_run_id]
    if cfg.tracking.enabled and parents:
        try:
            log_report_to_mlflow(report, resolve_tracking_uri(cfg), parents)
        except Exception as exc:  # noqa: BLE001 - the report on disk is what matters
            log.warning("could not attach the report to MLflow: %s", exc)
    settings = {s["column"]: s.get("mean_relative") for s in ist.summary.settings}
    return {"output_dir": str(out), "report": str(report), "tracking_uri": resolve_tracking_uri(cfg),
            "pt_parent_run": pt.parent_run_id, "ist_parent_run": ist.parent_run_id,
            "jobs": {"pt": pt.jobs_total, "ist": ist.jobs_total,
                     "failed": pt.jobs_failed + ist.jobs_failed},
            "mean_relative": settings, "msf_runs": [m.get("mlflow_run_id") for m in msf_runs if isinstance(m, dict)]}
