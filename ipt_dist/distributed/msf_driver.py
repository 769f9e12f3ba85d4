"""Distributed MSF, the driver: checks every input, creates the one MLflow run, launches a Ray Train
`TorchTrainer` of `msf_worker.train_func` workers and exports the best autoencoder.

    python ray_jobs/msf.py --config configs/msf.yaml            # local Ray, started on demand
    python ray_jobs/msf.py --smoke-test --out /tmp/msf_smoke    # tiny CPU run, 2 workers

Layout of `<output_dir>`:
    msf/                 best mean-dev autoencoder, the artifact IST consumes (save_msf_checkpoint)
    msf_dist/run.json    Ray run name, MLflow run id and the inputs it was started from (what `--resume`
                         continues, and checks)
    msf_dist/history.jsonl   per-step metrics written by rank 0 (`resumed_from` marks restarts)
    msf_dist/summary.json
    ray_results/<run>/   Ray Train checkpoints (distributed.storage_path)

This is an orchestration module: ray is imported inside functions, deepspeed never (the workers
import it once DS_ACCELERATOR is set).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import uuid
from pathlib import Path

from ipt_dist.artifacts import atomic_write_bytes, ensure_writable_dir
from ipt_dist.config import IPTConfig, config_to_dict, flatten_config, save_config
from ipt_dist.distributed.deepspeed_config import zero_stage
from ipt_dist.distributed.msf_inputs import (
    RUN_FILE,
    absolutize,
    check_inputs,
    dist_dir,
    expected_backbone_name,
)
from ipt_dist.distributed.msf_worker import BEST_DIR, train_func
from ipt_dist.paths import stage_dir
from ipt_dist.testing.faults import MSF_CRASH_MARKER

log = logging.getLogger(__name__)


class DistributedMSFError(RuntimeError):
    """The Ray Train run failed after it started (the cause is chained)."""


# ==================================================================================== driver


def _split_name(cfg: IPTConfig) -> str:
    if cfg.data.split_file:
        return Path(cfg.data.split_file).stem
    return "custom" if cfg.data.tasks else "all"


def _mlflow_run(cfg: IPTConfig, record: dict | None, tags: dict, datasets: list[dict] = ()) -> str | None:
    """Create the run's single MLflow run in the driver (or reopen it on --resume); returns its id.

    `datasets`: the training draws (`tracking.msf_datasets`), logged as the new run's dataset inputs.
    """
    if not cfg.tracking.enabled:
        return None
    from mlflow import MlflowClient

    from ipt_dist.tracking import MLflowTracker

    uri = cfg.tracking.tracking_uri
    client = MlflowClient(uri)
    if record and record.get("mlflow_run_id"):
        client.update_run(record["mlflow_run_id"], status="RUNNING")
        client.set_tag(record["mlflow_run_id"], "resumed", "true")
        return record["mlflow_run_id"]
    # MLflowTracker creates the experiment with its artifacts next to an SQLite DB, not in ./mlruns of
    # this process (a temporary directory under `ray job submit`): tracking.get_or_create_experiment.
    name = cfg.tracking.run_name or f"msf-d{cfg.msf.d}"
    tracker = MLflowTracker(uri, cfg.tracking.experiment, name, tags=tags)
    tracker.log_params(flatten_config(cfg))
    if not tracker.flush(retries=3, wait=1.0) or tracker.rejected:
        raise DistributedMSFError(f"MLflow at {uri} did not accept the run's parameters; see the log above")
    tracker.log_inputs(list(datasets))
    if not tracker.flush(retries=3, wait=1.0):  # best effort: never stops training
        log.warning("MLflow run %s: the training tasks' dataset inputs were not logged", tracker.run_id)
    return tracker.run_id


def _missing_resources(cfg: IPTConfig) -> str | None:
    """What the cluster lacks for the worker group, or None when it fits."""
    import ray

    d = cfg.distributed
    per_cpu = d.resources_per_worker.get("CPU", 1)
    per_gpu = d.resources_per_worker.get("GPU", 1) if d.use_gpu else 0
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    have_cpu, have_gpu = sum(r.get("CPU", 0) for r in nodes), sum(r.get("GPU", 0) for r in nodes)
    need_cpu, need_gpu = d.num_workers * per_cpu, d.num_workers * per_gpu
    if have_cpu < need_cpu or have_gpu < need_gpu:
        return (f"{d.num_workers} workers (distributed.num_workers) x {per_cpu:g} CPU / {per_gpu:g} GPU each need "
                f"{need_cpu:g} CPUs / {need_gpu:g} GPUs, the Ray cluster has {have_cpu:g} CPUs / {have_gpu:g} GPUs")
    if not any(r.get("CPU", 0) >= per_cpu and r.get("GPU", 0) >= per_gpu for r in nodes):
        return (f"one worker needs {per_cpu:g} CPU / {per_gpu:g} GPU (distributed.resources_per_worker, use_gpu) "
                "and no node of the Ray cluster has that much")
    return None


def _wait_for_resources(cfg: IPTConfig, poll_s: float = 5.0) -> None:
    """Wait at most `distributed.resource_wait_s` for the cluster to fit the worker group.

    Ray Train would otherwise wait forever for a placement group that cannot be placed.

    Raises:
        DistributedMSFError: still too small after the wait (nothing has been trained).
    """
    d = cfg.distributed
    missing = _missing_resources(cfg)
    if missing is None:
        return
    deadline = time.time() + d.resource_wait_s
    log.warning("%s: waiting up to %.0f s for an autoscaler to add nodes (distributed.resource_wait_s)",
                missing, d.resource_wait_s)
    while missing is not None and time.time() < deadline:
        time.sleep(min(poll_s, max(0.0, deadline - time.time())))
        missing = _missing_resources(cfg)
    if missing is not None:
        raise DistributedMSFError(
            f"{missing} (waited {d.resource_wait_s:.0f} s). Fix: lower distributed.num_workers or "
            "distributed.resources_per_worker, set distributed.use_gpu=false on a CPU cluster, or add nodes")


def _init_ray(cfg: IPTConfig) -> None:
    # No address: `ray job submit` sets RAY_ADDRESS; otherwise join a running local cluster or start one.
    from ipt_dist.distributed.cluster import init_ray

    init_ray(cfg)


def run_distributed_msf(cfg: IPTConfig, *, resume: bool = False, crash_at_step: int | None = None) -> dict:
    """Train MSF with Ray Train + DeepSpeed; export the best mean-dev AE to `<output_dir>/msf`.

    Args:
        cfg: the run's config (relative paths are made absolute against the current directory).
        resume: continue the run recorded in `<output_dir>/msf_dist/run.json` from its latest
            checkpoint (same Ray run, same MLflow run); refused when it was started from other inputs
            (`msf_inputs.check_inputs`). Without it a new run starts.
        crash_at_step: testing aid: the last worker exits hard before this step, once per run.
    Returns:
        A summary dict (best_dev, best_step, steps, seconds, checkpoint, ray_run, mlflow_run_id, ...).
    Raises:
        ConfigError, MSFInputError: bad config, DeepSpeed config, tasks, data or prompts (raised before
            Ray starts; every problem listed at once).
        DistributedMSFError: the Ray Train run failed (worker errors beyond distributed.max_failures).
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") and not Path(cfg.output_dir).expanduser().is_absolute():
        log.warning("output_dir %r is relative and this is a Ray job: it resolves inside the job's temporary "
                    "copy of the working dir and is deleted with it. Pass an absolute --out", cfg.output_dir)
    cfg = absolutize(cfg.validate())
    checked = check_inputs(cfg, resume=resume)
    if cfg.tracking.enabled:
        from ipt_dist.tracking import check_tracking_store

        check_tracking_store(cfg)  # a clear ConfigError before Ray starts
    ds_config = checked["ds_config"]
    run_dir = ensure_writable_dir(dist_dir(cfg))
    record = json.loads((run_dir / RUN_FILE).read_text()) if resume else None
    if record:
        name = record["ray_run"]  # the same Ray Train run name + storage: V2 restores its latest checkpoint
    else:
        if (run_dir / RUN_FILE).is_file():
            log.info("%s exists: starting a new run (pass --resume to continue that one)", run_dir / RUN_FILE)
        # Unique: Ray Train silently resumes a run whose name and storage path are reused.
        name = f"msf-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        for stale in (run_dir / "history.jsonl", run_dir / MSF_CRASH_MARKER):
            stale.unlink(missing_ok=True)
    _init_ray(cfg)
    _wait_for_resources(cfg)  # before the MLflow run: a cluster too small leaves nothing behind
    tags = {"stage": "msf", "backbone": expected_backbone_name(cfg), "d": cfg.msf.d,
            "split": _split_name(cfg), "zero_stage": zero_stage(ds_config),
            "num_workers": cfg.distributed.num_workers,
            "ds_config": Path(cfg.distributed.ds_config).name, "ray_run": name}
    from ipt_dist.tracking import msf_datasets

    mlflow_run_id = _mlflow_run(cfg, record, tags, msf_datasets(cfg, checked["provenance"], checked["sizes"]))
    record = {"ray_run": name, "mlflow_run_id": mlflow_run_id, "storage_path": cfg.distributed.storage_path,
              "tracking_uri": cfg.tracking.tracking_uri if cfg.tracking.enabled else None,
              # what a --resume is checked against: the start's (None for a run an older ipt_dist started)
              "inputs": record.get("inputs") if record else checked["inputs"]}
    atomic_write_bytes(run_dir / RUN_FILE, json.dumps(record, indent=2).encode())
    save_config(cfg, run_dir / "msf_config.yaml")
    (run_dir / "ds_config.json").write_text(json.dumps(ds_config, indent=2))

    d = cfg.distributed
    resources = dict(d.resources_per_worker) or None
    trainer = TorchTrainer(
        train_func,
        train_loop_config={"cfg": config_to_dict(cfg), "ds_config": ds_config,
                           "run": {"name": name, "dir": str(run_dir), "mlflow_run_id": mlflow_run_id,
                                   "crash_at_step": crash_at_step, "provenance": checked["provenance"]}},
        scaling_config=ray.train.ScalingConfig(num_workers=d.num_workers, use_gpu=d.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name, storage_path=d.storage_path,
            failure_config=ray.train.FailureConfig(max_failures=d.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            worker_runtime_env={"env_vars": {"DS_ACCELERATOR": "cpu"}} if not d.use_gpu else None),
    )
    t0 = time.time()
    log.info("distributed MSF: Ray run %s, %d workers, ZeRO-%d, MLflow run %s", name, d.num_workers,
             zero_stage(ds_config), mlflow_run_id)
    try:
        with _heartbeat(run_dir / "history.jsonl", cfg.msf.steps, f"distributed MSF d={cfg.msf.d}"):
            result = trainer.fit()
    except KeyboardInterrupt:
        _end_mlflow(cfg, mlflow_run_id, "KILLED")
        raise
    except Exception as exc:
        _end_mlflow(cfg, mlflow_run_id, "FAILED")
        raise DistributedMSFError(
            f"distributed MSF run {name} failed: {exc}\n  Checkpoints: {d.storage_path.rstrip('/')}/{name}. "
            f"Fix the cause, then continue with --resume (same output_dir {cfg.output_dir})") from exc
    if result.checkpoint is None:
        _end_mlflow(cfg, mlflow_run_id, "FAILED")
        raise DistributedMSFError(f"run {name} finished without a checkpoint; nothing to export")
    out = stage_dir(cfg, "msf")
    with result.checkpoint.as_directory() as ckpt:
        best = Path(ckpt) / BEST_DIR
        if not (best / "msf.json").is_file():
            _end_mlflow(cfg, mlflow_run_id, "FAILED")
            raise DistributedMSFError(f"the final checkpoint {ckpt} holds no best autoencoder")
        out.mkdir(parents=True, exist_ok=True)
        for f in ("autoencoder.safetensors", "msf.json"):
            atomic_write_bytes(out / f, (best / f).read_bytes())
    meta = json.loads((out / "msf.json").read_text())
    metrics = result.metrics or {}
    summary = {"best_dev": meta["best_dev"], "best_step": meta["step"], "steps": int(metrics.get("step", 0)),
               "final_loss": metrics.get("loss"), "seconds": time.time() - t0, "checkpoint": str(out),
               "d": cfg.msf.d, "tasks": meta["tasks"], "ray_run": name,
               "ray_checkpoint": result.checkpoint.path, "mlflow_run_id": mlflow_run_id,
               "zero_stage": zero_stage(ds_config), "num_workers": d.num_workers}
    atomic_write_bytes(run_dir / "summary.json", json.dumps(summary, indent=2).encode())
    _end_mlflow(cfg, mlflow_run_id, "FINISHED", model_dir=out)
    log.info("distributed MSF done: best mean dev %.4f at step %d -> %s", summary["best_dev"],
             summary["best_step"], out)
    return summary


HEARTBEAT_S = 60.0  # the driver's progress line while Ray Train runs (worker output is not on the console)


def _last_step(history: Path) -> dict | None:
    """The last complete line of rank 0's history.jsonl, or None."""
    try:
        with open(history, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = [ln for ln in f.read().splitlines() if ln.strip()]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None  # not written yet, or a line being written: the next beat reads it


@contextlib.contextmanager
def _heartbeat(history: Path, total: int, label: str, every_s: float | None = None):
    """While the block runs, log every `every_s` seconds (HEARTBEAT_S) the step rank 0 last wrote to
    `history` (shared storage; on a node the driver cannot read, nothing is logged) and an ETA from
    the step rate measured since the first beat."""
    import threading

    from ipt_dist.distributed.pack_progress import pack_eta

    stop = threading.Event()
    first: list[tuple[int, float]] = []

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S if every_s is None else every_s):
            row = _last_step(history)
            if not row:
                continue
            step, now = int(row.get("step", 0)), time.time()
            if not first:  # a resumed run starts mid-way: the rate counts steps of this run only
                first.append((step, now))
            s0, t0 = first[0]
            log.info("%s: step %d/%d, loss %.4g, ETA %s", label, step, total, float(row.get("loss", math.nan)),
                     pack_eta(step - s0, total - s0, now - t0))

    thread = threading.Thread(target=beat, name="msf-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def _end_mlflow(cfg: IPTConfig, run_id: str | None, status: str, model_dir: Path | None = None) -> None:
    """Close the run; with `model_dir` (the exported checkpoint) first log it as the run's LoggedModel."""
    if run_id is None:
        return
    from ipt_dist.tracking import MLflowTracker, log_msf_model

    tracker = MLflowTracker(cfg.tracking.tracking_uri, cfg.tracking.experiment, run_id=run_id)
    if model_dir is not None:
        log_msf_model(tracker, model_dir)
        if not tracker.flush(retries=3, wait=2.0):  # closing the run must not wait behind the model
            log.error("MLflow run %s: the autoencoder in %s was not logged as a LoggedModel", run_id,
                      model_dir)
            tracker = MLflowTracker(cfg.tracking.tracking_uri, cfg.tracking.experiment, run_id=run_id)
    tracker.end(status)
