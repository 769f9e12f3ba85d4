"""The whole method in one call: stage-0 PT sweep -> distributed MSF per d -> IST sweep -> report.

    ipt quickstart --out runs/quickstart                       # demo tasks, tiny backbone, CPU, minutes
    ipt quickstart --data ../shared/data/tasks --model smollm2-135m --out runs/real

Everything runs on one machine with no cluster and no server: a local Ray instance (or the
cluster in $RAY_ADDRESS / distributed.ray_address), an embedded MLflow store at
<out>/mlflow.db (or tracking.tracking_uri). Every stage is resumable: running the same
command again skips what is done. A changed configuration run into the same --out is refused
(sweeps and MSF compare what they were trained from and list the changed fields), so old
results are never silently mixed with new ones.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from importlib import resources
from pathlib import Path

from ipt_dist.config import IPTConfig, load_config
from ipt_dist.paths import (
    absolute,
    absolutize,
    data_dir,
    msf_dist_dir,
    msf_prompts_dir,
    pipeline_msf_dir,
    stage_dir,
)

log = logging.getLogger(__name__)


def quickstart_config_path() -> Path:
    return Path(str(resources.files("ipt_dist") / "configs" / "quickstart.yaml"))


def quickstart_config(out: str | Path, *, config: str | Path | None = None, data: str | None = None,
                      model: str | None = None, overrides: list[str] | None = None) -> IPTConfig:
    """The quickstart config with the command line's choices applied; all paths absolute."""
    out = absolute(out)
    items = [f"output_dir={out}", f"tracking.tracking_uri=sqlite:///{out / 'mlflow.db'}"]
    overrides = list(overrides or [])
    if data:
        root = absolute(data)
        items.append(f"data.data_dir={root}")
        chosen = any(o.split("=", 1)[0].strip() in ("data.unseen_tasks", "data.split_file", "data.tasks")
                     for o in overrides)
        if not chosen:  # the demo's unseen tasks do not exist in DIR: hold out a share of DIR's own tasks
            items += _held_out_items(root)
    if model:
        items.append(f"backbone.name_or_path={model}")
    return load_config(config or quickstart_config_path(), items + overrides)


HOLD_OUT_SHARE = 6  # the paper's random split holds out 20 of 120 tasks: 1 in 6
HOLD_OUT_SEED = 0


def _held_out_items(root: Path) -> list[str]:
    """Overrides that hold out a seeded random 1-in-6 share of the tasks in `root` as unseen tasks
    (at least one when there are 3 or more), so settings 2 and 5 are evaluated; with fewer tasks
    those two settings are dropped, and both choices are said."""
    import random

    from ipt_dist.data.local import list_tasks

    tasks = list_tasks(root)
    if len(tasks) < 3:
        log.warning("quickstart: %s holds %d tasks, too few to hold any out: settings msf_unseen and ist_unseen "
                    "(unseen tasks) are not run. Give more tasks or --set data.unseen_tasks=[...]", root, len(tasks))
        return ["data.unseen_tasks=[]", "sweep.settings=[msf_seen, ist_seen_same, ist_seen_new]"]
    n = max(1, round(len(tasks) / HOLD_OUT_SHARE))
    unseen = sorted(random.Random(HOLD_OUT_SEED).sample(tasks, n))
    log.info("quickstart: holding out %d of %d tasks of %s as unseen (seeded 1-in-%d draw; override with --set "
             "data.unseen_tasks=[...] or data.split_file): %s", n, len(tasks), root, HOLD_OUT_SHARE,
             ", ".join(unseen))
    return [f"data.unseen_tasks=[{', '.join(unseen)}]"]


def _msf_config(cfg: IPTConfig, d: int) -> IPTConfig:
    """Stage 1 for one intrinsic dimension: its own output dir, the shared prompts and MLflow store.

    MSF reads the prompts where stage 0 (the PT sweep) wrote them: `paths.msf_prompts_dir` of the
    pipeline's config (`msf.prompts_dir` when set, else `<out>/prompts`)."""
    from ipt_dist.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(cfg) if cfg.tracking.enabled else cfg.tracking.tracking_uri
    data = cfg.data
    if not data.data_dir and data.format != "hf":  # the pipeline's demo tasks, not a copy per d
        data = replace(data, data_dir=str(data_dir(cfg)))
    return replace(cfg, output_dir=str(pipeline_msf_dir(cfg, d)), data=data,
                   msf=replace(cfg.msf, d=d, prompts_dir=str(msf_prompts_dir(cfg))),
                   tracking=replace(cfg.tracking, run_name=f"msf-d{d}", tracking_uri=uri))


MSF_MARKER = "pipeline_msf.json"


def _msf_inputs(cfg_d: IPTConfig) -> dict:
    """The config fields and stage-0 prompt files (content hashes) the MSF of `cfg_d` is trained from."""
    from ipt_dist.rerun import msf_inputs
    from ipt_dist.stages.common import resolve_tasks

    return msf_inputs(cfg_d, resolve_tasks(cfg_d).train, cfg_d.msf.prompts_dir)


def check_msf_reuse(cfg_d: IPTConfig, d: int) -> bool:
    """True when MSF for `d` is already trained from these same inputs (the pipeline skips it).

    Raises:
        ConfigError: it was trained from other settings or other stage-0 prompts; reusing it
            silently would hand the IST sweep the wrong decoder.
    """
    import json

    from ipt_dist.config import ConfigError, describe_changes

    out = Path(cfg_d.output_dir)
    if not ((stage_dir(cfg_d, "msf") / "summary.json").is_file() or (msf_dist_dir(cfg_d) / "summary.json").is_file()):
        return False
    try:
        recorded = json.loads((stage_dir(cfg_d, "msf") / "msf.json").read_text()).get("provenance")
    except (OSError, ValueError):
        recorded = None
    if not recorded:  # the IST sweep would refuse a decoder whose training draw it cannot check
        raise ConfigError(f"{out}: MSF d={d} records no provenance in msf/msf.json (trained before ipt_dist "
                          "recorded what MSF is trained from), so the IST sweep cannot check it. Fix: delete "
                          f"{out} (or move it away) and run the same command again to retrain it, or use another --out")
    marker = out / MSF_MARKER
    if not marker.is_file():
        log.warning("pipeline: MSF d=%d in %s has no %s (trained before this check existed): reused as is",
                    d, out, MSF_MARKER)
        return True
    diff = describe_changes(json.loads(marker.read_text())["inputs"], _msf_inputs(cfg_d))
    if diff:
        raise ConfigError(f"{out}: MSF d={d} was trained from other inputs than this run's ({diff}). Fix: use "
                          f"another --out for this configuration, or delete {out} to train it again")
    log.info("pipeline: MSF d=%d already trained in %s", d, out)
    return True


def _mark_msf(cfg_d: IPTConfig) -> None:
    import json

    from ipt_dist.artifacts import atomic_write_bytes

    atomic_write_bytes(Path(cfg_d.output_dir) / MSF_MARKER,
                       json.dumps({"inputs": _msf_inputs(cfg_d)}, indent=1).encode())


def _publish_ui_views(cfg: IPTConfig) -> str | None:
    """The MLflow UI's view of this experiment to open (all stages' runs, headline metrics; see
    `tracking.publish_ui_views`); its URL path."""
    from mlflow import MlflowClient

    from ipt_dist.tracking import publish_ui_views, resolve_tracking_uri

    try:
        client = MlflowClient(resolve_tracking_uri(cfg))
        return publish_ui_views(client, client.get_experiment_by_name(cfg.tracking.experiment).experiment_id)
    except Exception as exc:  # noqa: BLE001 - a UI convenience; the runs are written
        log.warning("could not write the MLflow UI views: %s", exc)
        return None


def run_pipeline(cfg: IPTConfig, *, distributed_msf: bool = True) -> dict:
    """Run all stages for `cfg` (its `sweep.dims` keys are the intrinsic dimensions).

    MSF checkpoints go to `<out>/msf_d<d>/msf`; `sweep.dims` values are replaced by them.
    Returns paths and headline numbers.
    """
    from ipt_dist.distributed.fanout import run_sweep
    from ipt_dist.modeling.backbone import resolve_auto_dtype
    from ipt_dist.report import log_report_to_mlflow, make_report
    from ipt_dist.tracking import resolve_tracking_uri

    cfg = absolutize(cfg.validate())  # `sweep.dims` below are taken relative to output_dir otherwise
    gpu = cfg.sweep.num_gpus > 0 or (distributed_msf and cfg.distributed.use_gpu)
    cfg = resolve_auto_dtype(cfg, "cuda" if gpu else "cpu")  # once, so every stage records the same dtype
    out = Path(cfg.output_dir)
    dims = sorted(cfg.sweep.dims) or [cfg.msf.d]
    log.info("pipeline: stage 0 (PT sweep) -> MSF for d in %s -> IST sweep -> report, output in %s", dims, out)

    pt = run_sweep(cfg, "pt")
    if pt.jobs_failed:  # every IST setting divides by PT on its draws: MSF would be trained for nothing
        from ipt_dist.errors import StageFailed

        raise StageFailed(f"stage 0: {pt.jobs_failed} PT jobs failed ({pt.sweep_dir / 'failures.jsonl'}); MSF and "
                          "IST need every PT result (the prompts, and the denominator of every draw). Run the same "
                          "command again to retry them: finished jobs are skipped")
    msf_runs = []
    for d in dims:
        cfg_d = _msf_config(cfg, d)
        if check_msf_reuse(cfg_d, d):
            continue
        if distributed_msf:
            from ipt_dist.distributed.msf_driver import run_distributed_msf
            from ipt_dist.distributed.msf_inputs import resumable_run

            resume = resumable_run(cfg_d)  # a stopped run goes on from its checkpoint (same inputs only)
            if resume:
                log.info("pipeline: MSF d=%d continues the stopped run in %s", d, cfg_d.output_dir)
            msf_runs.append(run_distributed_msf(cfg_d, resume=resume))
            _mark_msf(cfg_d)
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
            _mark_msf(cfg_d)
    cfg = replace(cfg, sweep=replace(cfg.sweep, dims={d: str(pipeline_msf_dir(cfg, d) / "msf") for d in dims}))
    ist = run_sweep(cfg, "ist")
    report = make_report(out)
    parents = [r.parent_run_id for r in (pt, ist) if r.parent_run_id]
    if cfg.tracking.enabled and parents:
        try:
            log_report_to_mlflow(report, resolve_tracking_uri(cfg), parents)
        except Exception as exc:  # noqa: BLE001 - the report on disk is what matters
            log.warning("could not attach the report to MLflow: %s", exc)
    view = _publish_ui_views(cfg) if cfg.tracking.enabled else None
    settings = {s["column"]: s.get("mean_relative") for s in ist.summary.settings}
    return {"output_dir": str(out), "report": str(report), "tracking_uri": resolve_tracking_uri(cfg),
            "mlflow_view": view,
            "pt_parent_run": pt.parent_run_id, "ist_parent_run": ist.parent_run_id,
            "jobs": {"pt": pt.jobs_total, "ist": ist.jobs_total,
                     "failed": pt.jobs_failed + ist.jobs_failed},
            "mean_relative": settings, "msf_runs": [m.get("mlflow_run_id") for m in msf_runs if isinstance(m, dict)]}
