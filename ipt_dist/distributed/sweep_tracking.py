"""Sweep tracking in MLflow, written from ONE process (the sweep driver).

One parent run per sweep, found again by its tag `ipt.sweep_key` (stage + absolute sweep
directory) so a re-submission reuses it; one child run per finished job, tagged `ipt.job_id`
and looked up by that tag before anything is created, so re-runs never duplicate children.
A child is written as create (with its tags) -> its task's draw as a dataset input -> the learned
z / prompt as an artifact -> one `log_batch` (params, dev and loss curves, scores, and the tag
`ipt.logged=1`, atomic in one call; more calls only past MLflow's 1000 metrics per batch) ->
terminated. A child without `ipt.logged=1` is incomplete, deleted and written again.

The results JSONL is the source of truth: a child that cannot be written (database locked,
server down) stays queued and is retried, and at the next start `catch_up` writes every
finished job that still lacks a complete child run.

With `tracking.background` (the default) every write of the fan-out (catch-up, children, retries,
progress) goes to ONE writer thread (`BackgroundSweepTracker`), in order, so the driver's loop
submits the next pack instead of waiting on MLflow; `finish` waits for the queue, except after
an interrupt, when the queued children are left to the next start's catch-up.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ipt_dist.config import IPTConfig, flatten_config
from ipt_dist.summary import relative
from ipt_dist.tracking import get_or_create_experiment, metric_key, send_params

log = logging.getLogger(__name__)

__all__ = ["BackgroundSweepTracker", "NullSweepTracker", "SweepTracker", "claim_sweep_id", "make_sweep_tracker", "metric_key",
           "sweep_key"]

JOB_TAG, KEY_TAG, ROLE_TAG, DONE_TAG = "ipt.job_id", "ipt.sweep_key", "ipt.role", "ipt.logged"
SUMMARY_FILES = ("summary.md", "summary.csv", "summary_settings.csv", "summary.json", "config.yaml")
# Record fields logged as child-run params (None values are left out).
PARAM_FIELDS = ("task", "seed", "data_seed", "lr", "d", "msf_run_id", "setting", "decoder", "role", "kind",
                "seen", "metric", "z_source", "z_init", "backbone", "job_id")


SWEEP_ID_FILE = "sweep_id"  # in a sweep directory: which MLflow parent run is this directory's


def sweep_key(stage: str, sweep_dir: str | Path) -> str:
    """Identity of a sweep: its stage, absolute results directory and the directory's `sweep_id`
    (`claim_sweep_id`), so a directory moved away and started again at the same path gets a parent
    run of its own instead of the old parent with children its summary no longer holds. A
    directory without the file (written before it existed) keeps the key of stage and path."""
    base = f"{stage}|{Path(sweep_dir).resolve()}"
    id_file = Path(sweep_dir) / SWEEP_ID_FILE
    if id_file.is_file():
        base += "|" + id_file.read_text().strip()
    return hashlib.sha1(base.encode()).hexdigest()[:16]


def claim_sweep_id(sweep_dir: Path, has_results: bool) -> None:
    """Give a new sweep directory (no results yet) its own id; leave any other directory as it is."""
    id_file = Path(sweep_dir) / SWEEP_ID_FILE
    if not id_file.is_file() and not has_results:
        id_file.write_text(uuid.uuid4().hex + "\n")


def _finite(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


class NullSweepTracker:
    """Tracking disabled: the results files alone."""

    parent_run_id: str | None = None

    def start(self, cfg: IPTConfig) -> None: ...

    def use_train_digests(self, cfg: IPTConfig, digests: dict) -> None: ...

    def catch_up(self, records: list[dict], params_dir: Path, pt_scores: dict | None = None) -> int:
        return 0

    def log_job(self, record: dict, param_path: Path | None, pt_score: float | None = None) -> bool:
        return True

    def retry_pending(self, attempts: int = 1, wait: float = 0.0) -> bool:
        return True

    def log_progress(self, done: int, failed: int, total: int) -> None: ...

    def finish(self, status: str, summary, sweep_dir: Path, counts: dict) -> None: ...


class SweepTracker:
    """Parent + child runs of one sweep through an `MlflowClient` (one writer: the driver)."""

    def __init__(self, tracking_uri: str, experiment: str, key: str, run_name: str, stage: str,
                 sweep_dir: Path) -> None:
        from mlflow import MlflowClient

        from ipt_dist.tracking import fail_fast_http

        fail_fast_http(tracking_uri)
        self.client = MlflowClient(tracking_uri)
        self.tracking_uri, self.experiment, self.key = tracking_uri, experiment, key
        self.run_name, self.stage, self.sweep_dir = run_name, stage, Path(sweep_dir)
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self.children: dict[str, str] = {}  # job_id -> run_id of a complete child run
        self._pending: dict[str, tuple[dict, Path | None, float | None]] = {}
        self._uncertain: set[str] = set()  # a create may have happened: search by tag before creating again
        self._draws: dict[tuple[str, int], dict] = {}  # (task, data seed) -> `draw_dataset`

    def use_train_digests(self, cfg: IPTConfig, digests: dict[tuple[str, int], tuple[str, int]]) -> None:
        """(task, data seed) -> (training-split digest, size), computed once per draw by the plan:
        each child gets its draw as a dataset input (none for a draw not in `digests`)."""
        from ipt_dist.tracking import draw_dataset

        self._draws = {(t, s): draw_dataset(cfg, t, s, digest, rows)
                       for (t, s), (digest, rows) in digests.items()}

    # ------------------------------------------------------------------ parent
    def start(self, cfg: IPTConfig, attempts: int = 3, wait: float = 2.0) -> None:
        """Find or create the experiment and the parent run; load the existing children.

        If MLflow stays unreachable the sweep goes on without it (an error says so); the next
        start catches up from the results file.
        """
        for attempt in range(attempts):
            try:
                self._start(cfg)
                return
            except Exception as exc:  # noqa: BLE001 - tracking must never stop the sweep
                log.warning("MLflow start failed (attempt %d/%d): %s", attempt + 1, attempts, exc)
                if attempt + 1 < attempts:
                    time.sleep(wait)
        log.error("MLflow at %s unreachable: the sweep runs without tracking; results.jsonl keeps everything "
                  "and the next submission catches MLflow up", self.tracking_uri)
        self.parent_run_id = None

    def _search(self, filter_string: str) -> list:
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=filter_string,
                                           max_results=1000, order_by=["attributes.start_time ASC"],
                                           page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def _start(self, cfg: IPTConfig) -> None:
        # artifacts next to an SQLite DB, not ./mlruns of the cwd (temporary under `ray job submit`)
        self.experiment_id = get_or_create_experiment(self.client, self.experiment, self.tracking_uri)
        parents = self._search(f"tags.`{KEY_TAG}` = '{self.key}' and tags.`{ROLE_TAG}` = 'sweep'")
        if parents:
            self.parent_run_id = parents[0].info.run_id
            self.client.update_run(self.parent_run_id, status="RUNNING")
            log.info("MLflow: resuming parent run %s of this sweep", self.parent_run_id)
        else:
            run = self.client.create_run(self.experiment_id, run_name=self.run_name,
                                         tags={KEY_TAG: self.key, ROLE_TAG: "sweep", "ipt.stage": self.stage,
                                               "ipt.sweep_dir": str(self.sweep_dir)})
            self.parent_run_id = run.info.run_id
            send_params(self.client, self.parent_run_id, flatten_config(cfg))
            log.info("MLflow: parent run %s in experiment %r (%s)", self.parent_run_id, self.experiment,
                     self.tracking_uri)
        self._load_children()

    def _load_children(self) -> None:
        self.children = {}
        for run in self._search(f"tags.`{KEY_TAG}` = '{self.key}' and tags.`{ROLE_TAG}` = 'job'"):
            job_id = run.data.tags.get(JOB_TAG)
            if job_id is None:
                continue
            if run.data.tags.get(DONE_TAG) == "1" and job_id not in self.children:
                self.children[job_id] = run.info.run_id
            else:  # incomplete (logging died half-way) or a duplicate: removed, written again
                self.client.delete_run(run.info.run_id)

    # ------------------------------------------------------------------ children
    def catch_up(self, records: list[dict], params_dir: Path, pt_scores: dict | None = None) -> int:
        """Write a child for every finished job that has none; returns how many were written.

        `pt_scores`: (task, data seed) -> PT test on that draw (`summary.pt_scores_by_draw`).
        """
        if self.parent_run_id is None:
            return 0
        missing = [r for r in records if r["job_id"] not in self.children]
        written = sum(self.log_job(r, Path(params_dir) / f"{r['job_id']}.safetensors",
                                   (pt_scores or {}).get((r["task"], r.get("data_seed")))) for r in missing)
        if missing:
            log.info("MLflow: caught up %d of %d finished jobs that had no child run", written, len(missing))
        return written

    def log_job(self, record: dict, param_path: Path | None, pt_score: float | None = None) -> bool:
        """Write the child run of a finished job (once); on failure keep it queued for a retry.

        `pt_score`: PT's test on the job's task and draw (data seed), logged as `pt_test`; the
        child's `relative` is test / pt_test, the paired ratio of the summary.
        """
        if self.parent_run_id is None:
            return False
        job_id = record["job_id"]
        if job_id in self.children:
            return True
        try:
            self._write_child(record, param_path, pt_score)
        except Exception as exc:  # noqa: BLE001 - results.jsonl holds it; retried and caught up later
            log.warning("MLflow: child run of %s not written (%s); will retry", job_id, exc)
            self._pending[job_id] = (record, param_path, pt_score)
            return False
        self._pending.pop(job_id, None)
        return True

    def _child_name(self, rec: dict) -> str:
        parts = [rec.get("role"), rec.get("task"), f"s{rec.get('data_seed', rec.get('seed'))}",
                 f"lr{rec['lr']}" if rec.get("lr") is not None else None,
                 f"d{rec['d']}" if rec.get("d") is not None else None,
                 rec.get("decoder") if rec.get("decoder") not in (None, "msf") else None]
        return ":".join(str(p) for p in parts if p)

    def _write_child(self, rec: dict, param_path: Path | None, pt_score: float | None) -> None:
        from mlflow.entities import Metric, Param, RunTag

        from ipt_dist.tracking import MAX_METRICS_PER_BATCH, dataset_inputs

        job_id = rec["job_id"]
        if job_id in self._uncertain:  # an earlier create may have gone through: look it up by tag
            for run in self._search(f"tags.`{KEY_TAG}` = '{self.key}' and tags.`{JOB_TAG}` = '{job_id}'"):
                if run.data.tags.get(DONE_TAG) == "1" and job_id not in self.children:
                    self.children[job_id] = run.info.run_id
                else:
                    self.client.delete_run(run.info.run_id)
            self._uncertain.discard(job_id)
            if job_id in self.children:
                return
        self._uncertain.add(job_id)
        run_id = self.client.create_run(
            self.experiment_id, run_name=self._child_name(rec),
            tags={"mlflow.parentRunId": self.parent_run_id, KEY_TAG: self.key, ROLE_TAG: "job",
                  JOB_TAG: job_id, "ipt.job_role": str(rec.get("role")), "ipt.task": str(rec.get("task"))},
        ).info.run_id
        self._uncertain.discard(job_id)
        try:
            ts = int(time.time() * 1000)
            params = [Param(k, str(rec[k])) for k in PARAM_FIELDS if rec.get(k) is not None]
            metrics = [Metric("dev", float(v), ts, int(step)) for step, v in rec.get("dev_curve") or []
                       if _finite(v) is not None]
            metrics += [Metric("train_loss", float(v), ts, int(step))
                        for step, v in rec.get("loss_curve") or [] if _finite(v) is not None]
            scalars = {"best_dev": rec.get("best_dev"), "test": rec.get("test"),
                       "best_step": rec.get("best_step"), "seconds": rec.get("seconds")}
            if pt_score is not None:
                scalars["pt_test"] = pt_score
                scalars["relative"] = relative(_finite(rec.get("test")), pt_score)
            metrics += [Metric(k, float(v), ts, 0) for k, v in scalars.items() if _finite(v) is not None]
            draw = self._draws.get((rec.get("task"), rec.get("data_seed")))
            if draw is not None:  # settings 1-2 evaluate on the draw, the other jobs train on it
                context = "evaluation" if rec.get("kind") == "msf_eval" else "training"
                self.client.log_inputs(run_id, datasets=dataset_inputs([{**draw, "context": context}]))
            if param_path is not None and Path(param_path).is_file():
                self.client.log_artifact(run_id, str(param_path), "params")
            # Params (at most len(PARAM_FIELDS) < 100) and the first 1000 metrics in one call; the done
            # tag goes with the last call, so a child holding it has everything.
            n = MAX_METRICS_PER_BATCH
            chunks = [metrics[i : i + n] for i in range(0, len(metrics), n)] or [[]]
            for i, chunk in enumerate(chunks):
                self.client.log_batch(run_id, metrics=chunk, params=params if i == 0 else [],
                                      tags=[RunTag(DONE_TAG, "1")] if i == len(chunks) - 1 else [])
            self.client.set_terminated(run_id, "FINISHED")
        except Exception:
            try:
                self.client.delete_run(run_id)  # never leave a half-written child behind
            except Exception:  # noqa: BLE001
                self._uncertain.add(job_id)  # found by tag and cleaned before the next attempt
            raise
        self.children[job_id] = run_id

    @property
    def pending(self) -> int:
        """Children whose write failed, waiting for a retry."""
        return len(self._pending)

    def retry_pending(self, attempts: int = 1, wait: float = 0.0, stop=None) -> bool:
        """Retry queued children; True when none is left. `stop()` true ends it between children."""
        for attempt in range(attempts):
            for rec, path, pt in list(self._pending.values()):
                if stop is not None and stop():
                    return not self._pending
                if not self.log_job(rec, path, pt):
                    break
            if not self._pending:
                return True
            if attempt + 1 < attempts:
                time.sleep(wait)
        return not self._pending

    def log_progress(self, done: int, failed: int, total: int) -> None:
        if self.parent_run_id is None:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        try:
            self.client.log_batch(self.parent_run_id, metrics=[Metric("jobs_done", done, ts, done),
                                                               Metric("jobs_failed", failed, ts, done),
                                                               Metric("jobs_total", total, ts, done)])
        except Exception as exc:  # noqa: BLE001 - progress metrics are best effort
            log.warning("MLflow: progress not logged (%s)", exc)

    def finish(self, status: str, summary, sweep_dir: Path, counts: dict) -> None:
        """Summary files and aggregate metrics to the parent run, then close it."""
        if self.parent_run_id is None:
            return
        if not self.retry_pending(attempts=3, wait=2.0):
            log.error("MLflow: %d child runs could not be written now; the next submission catches them up "
                      "from results.jsonl", len(self._pending))
        from mlflow.entities import Metric

        metrics = dict(counts)
        for row in getattr(summary, "settings", None) or []:
            for name in ("mean_relative", "mean_relative_ci_low", "mean_relative_ci_high", "n_relative",
                         "ratio_of_means", "mean_score", "mean_test", "mean_std_over_seeds"):
                if _finite(row.get(name)) is not None:
                    metrics[metric_key(f"{row['column']}/{name}")] = row[name]
        sdir = Path(sweep_dir)
        for attempt in range(3):
            try:
                ts = int(time.time() * 1000)
                items = [Metric(k, float(v), ts, 0) for k, v in metrics.items() if _finite(v) is not None]
                for i in range(0, len(items), 1000):
                    self.client.log_batch(self.parent_run_id, metrics=items[i : i + 1000])
                for name in SUMMARY_FILES:
                    if (sdir / name).is_file():
                        self.client.log_artifact(self.parent_run_id, str(sdir / name), "summary")
                self.client.set_terminated(self.parent_run_id, status)
                self._publish_views()
                return
            except Exception as exc:  # noqa: BLE001
                log.warning("MLflow: closing the parent run failed (attempt %d/3): %s", attempt + 1, exc)
                if attempt < 2:
                    time.sleep(2.0)

    def _publish_views(self) -> None:
        """Refresh the MLflow UI's overview and jobs views (their columns follow the metrics logged)."""
        from ipt_dist.tracking import publish_sweep_view, publish_ui_views

        try:
            jobs = publish_sweep_view(self.client, self.experiment_id, self.stage, self.key)
            path = publish_ui_views(self.client, self.experiment_id)
        except Exception as exc:  # noqa: BLE001 - a UI convenience; the runs are written
            log.warning("MLflow: the UI views were not written (%s)", exc)
            return
        log.info("MLflow UI: %s shows every stage's run with the headline metrics, %s this sweep's jobs",
                 path, jobs)  # path: the pipeline view (sweeps expandable) when it fits one page


class BackgroundSweepTracker:
    """A `SweepTracker` whose fan-out writes run on one background thread, in submission order.

    `start` and `finish` run in the caller's thread (the parent run id is needed at once; the
    summary goes last). Between them the wrapped tracker and its client are used by the writer
    thread only. Queued progress metrics and retries are coalesced (one of each waiting at most).
    """

    def __init__(self, tracker: SweepTracker) -> None:
        self.tracker = tracker
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._queued_children = 0
        self._progress: tuple[int, int, int] | None = None  # the latest, written by the next progress op
        self._retry_queued = False
        self._stop = threading.Event()  # set on an interrupt: queued loops stop between children
        self._live: set[Future] = set()  # submitted and not finished

    @property
    def parent_run_id(self) -> str | None:
        return self.tracker.parent_run_id

    @property
    def backlog(self) -> int:
        """Child runs queued and not yet tried (after an interrupt: the ones cancelled)."""
        return self._queued_children

    def start(self, cfg: IPTConfig) -> None:
        self.tracker.start(cfg)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-writer")

    def use_train_digests(self, cfg: IPTConfig, digests: dict) -> None:
        self.tracker.use_train_digests(cfg, digests)

    def _submit(self, fn, *args) -> None:
        if self._pool is None or self.tracker.parent_run_id is None:
            return
        fut: Future = self._pool.submit(fn, *args)
        with self._lock:
            self._live.add(fut)
        fut.add_done_callback(self._done)

    def _done(self, fut: Future) -> None:
        with self._lock:
            self._live.discard(fut)
        _log_failure(fut)

    def catch_up(self, records: list[dict], params_dir: Path, pt_scores: dict | None = None) -> int:
        """Queue a child for every finished job without one (one queue item each, so an interrupt
        leaves the rest); returns how many are queued."""
        if self.tracker.parent_run_id is None:
            return 0
        missing = [r for r in records if r["job_id"] not in self.tracker.children]
        if missing:
            log.info("MLflow: %d finished jobs have no child run; written in the background", len(missing))
        for r in missing:
            self.log_job(r, Path(params_dir) / f"{r['job_id']}.safetensors",
                         (pt_scores or {}).get((r["task"], r.get("data_seed"))))
        return len(missing)

    def log_job(self, record: dict, param_path: Path | None, pt_score: float | None = None) -> bool:
        """Queue the child run of a finished job; True (written later, or caught up at the next start)."""
        if self.tracker.parent_run_id is None:
            return False
        with self._lock:
            self._queued_children += 1
        self._submit(self._log_job, record, param_path, pt_score)
        return True

    def _log_job(self, record: dict, param_path: Path | None, pt_score: float | None) -> None:
        try:
            self.tracker.log_job(record, param_path, pt_score)
        finally:
            with self._lock:
                self._queued_children -= 1

    def retry_pending(self, attempts: int = 1, wait: float = 0.0) -> bool:
        """Queue one retry of the children that failed (if none is queued already)."""
        with self._lock:
            if self._retry_queued or not self.tracker.pending:
                return not self.tracker.pending
            self._retry_queued = True
        self._submit(self._retry, attempts, wait)
        return False

    def _retry(self, attempts: int, wait: float) -> None:
        with self._lock:
            self._retry_queued = False
        self.tracker.retry_pending(attempts, wait, stop=self._stop.is_set)

    def log_progress(self, done: int, failed: int, total: int) -> None:
        with self._lock:
            queued, self._progress = self._progress is not None, (done, failed, total)
        if not queued:
            self._submit(self._write_progress)

    def _write_progress(self) -> None:
        with self._lock:
            progress, self._progress = self._progress, None
        if progress is not None:
            self.tracker.log_progress(*progress)

    def finish(self, status: str, summary, sweep_dir: Path, counts: dict) -> None:
        """Wait for the queued writes (after an interrupt, or Ctrl-C while waiting: only the child
        being written), then close the parent."""
        if self._pool is not None:
            try:
                if status == "KILLED":
                    self._drop_queue()
                else:
                    if self.backlog:
                        log.info("MLflow: writing %d queued child runs", self.backlog)
                    self._pool.shutdown(wait=True)
            except BaseException:  # Ctrl-C while the queue drains: stop it, close the parent as KILLED
                self._drop_queue()
                self._pool = None
                self.tracker.finish("KILLED", summary, sweep_dir, counts)
                raise
            self._pool = None
        self.tracker.finish(status, summary, sweep_dir, counts)

    def _drop_queue(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            live = list(self._live)
        for fut in live:  # the child being written (the others are cancelled); waited on through its
            if not fut.cancelled():  # future, as a thread join interrupted by Ctrl-C may not wait again
                fut.exception()
        if self.backlog:
            log.warning("MLflow: %d queued child runs left to the next start's catch-up (results.jsonl has them)",
                        self.backlog)


def _log_failure(fut: Future) -> None:
    exc = None if fut.cancelled() else fut.exception()
    if exc is not None:  # the tracker's own writes catch their errors; this is a bug, not a lost result
        log.error("MLflow writer: %s: %s (results.jsonl keeps the job; the next start catches MLflow up)",
                  type(exc).__name__, exc)


def make_sweep_tracker(cfg: IPTConfig, stage: str, sweep_dir: Path):
    """The driver's tracker: MLflow when `tracking.enabled`, else a no-op one."""
    if not cfg.tracking.enabled:
        return NullSweepTracker()
    from ipt_dist.tracking import check_tracking_store

    uri = check_tracking_store(cfg)  # a clear ConfigError before any pack runs
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        log.warning("tracking URI %s is relative to the current directory; under `ray job submit` that is a "
                    "temporary copy. Use sqlite:////abs/path/mlflow.db or a server URL", uri)
    results = Path(sweep_dir) / "results.jsonl"
    claim_sweep_id(sweep_dir, has_results=results.is_file() and results.stat().st_size > 0)
    tracker = SweepTracker(uri, cfg.tracking.experiment, sweep_key(stage, sweep_dir),
                           cfg.tracking.run_name or f"{stage}-sweep", stage, sweep_dir)
    return BackgroundSweepTracker(tracker) if cfg.tracking.background else tracker
