"""Experiment tracking behind a small interface; MLflow is imported only when used.

Only rank 0 of a Ray Train run, or the sweep driver, holds a real tracker. Logging errors
never stop training: a failed call is queued and retried (the results files stay the
source of truth); only a call MLflow refuses for good is dropped, with an error line and the run's
`ipt.tracking_rejected` tag (`MLflowTracker.flush`).

MLflow 3 entities: each task's few-shot draw is a dataset input of the runs that use it
(`draw_dataset`: name `<task>@<data seed>`, digest = the training split's content digest of
`ipt_dist.provenance`), and an MSF autoencoder is a `LoggedModel` of its run (`log_msf_model`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from ipt_dist.config import ConfigError, IPTConfig, flatten_config
from ipt_dist.errors import first_line
from ipt_dist.paths import demo_data_dir
from ipt_dist.provenance import draw_seed, record_digest

log = logging.getLogger(__name__)


def resolve_tracking_uri(cfg: IPTConfig) -> str:
    """Config > $MLFLOW_TRACKING_URI > sqlite:///<output_dir>/mlflow.db (absolute path)."""
    if cfg.tracking.tracking_uri:
        return cfg.tracking.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    db = Path(cfg.output_dir).expanduser().resolve() / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def _uri_field(cfg: IPTConfig) -> str:
    if cfg.tracking.tracking_uri:
        return "tracking.tracking_uri"
    return "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "the default tracking store"


def check_tracking_store(cfg: IPTConfig, timeout: float = 5.0) -> str:
    """Prove the tracking store is usable before any work; returns the resolved URI.

    Checks what fails slowly or obscurely inside MLflow: a bare path (MLflow 3 reads it as the
    refused file store), an SQLite file whose directory cannot be created or written (MLflow
    retries ~100 s, then a raw sqlalchemy error), a server that does not answer. Other schemes
    (databricks, postgresql, ...) are left to MLflow. A server that goes away *during* a run is
    handled by the trackers' queue-and-retry.

    Raises:
        ConfigError: naming tracking.tracking_uri (or MLFLOW_TRACKING_URI), the cause and the fix.
    """
    uri = resolve_tracking_uri(cfg)
    where = f"{_uri_field(cfg)} ({uri})"
    fix_db = "sqlite:////abs/path/mlflow.db (four slashes for an absolute path) or a server URL http://host:5000"
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if not scheme:
        raise ConfigError(f"{where}: a path without a scheme; MLflow 3 would read it as a file store, which it "
                          f"refuses. Fix: use {fix_db}")
    if scheme == "file" and not os.environ.get("MLFLOW_ALLOW_FILE_STORE"):
        raise ConfigError(f"{where}: MLflow 3 refuses the file store unless MLFLOW_ALLOW_FILE_STORE=true. Fix: use "
                          f"{fix_db}")
    if scheme == "sqlite":
        rest = uri[len("sqlite://"):]
        if rest in ("", "/", "/:memory:"):
            return uri
        db = Path(rest.removeprefix("/")).expanduser()  # sqlite:////abs -> /abs
        if db.is_dir():
            raise ConfigError(f"{where}: {db} is a directory, not a database file. Fix: name a file, e.g. "
                              f"sqlite:///{(db / 'mlflow.db').resolve()}")
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
            probe = db.parent / f".mlflow_probe_{os.getpid()}"
            probe.write_bytes(b"ok")
            probe.unlink()
            if db.exists() and not os.access(db, os.R_OK | os.W_OK):
                raise PermissionError(13, "the database file is not readable and writable")
        except OSError as exc:
            raise ConfigError(f"{where}: cannot write the SQLite database at {db} ({exc.strerror or exc}). Fix: "
                              f"choose a writable location, e.g. sqlite:///{Path(cfg.output_dir).resolve()}"
                              f"/mlflow.db, or a server URL") from exc
        return uri
    if scheme in ("http", "https"):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
                pass
        except urllib.error.HTTPError as exc:  # it answers: auth, a proxy, an old server; MLflow will tell
            log.warning("%s: /health answered HTTP %s; continuing", where, exc.code)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConfigError(f"{where}: no MLflow server answers ({reason}). Fix: start it (mlflow server "
                              f"--backend-store-uri sqlite:////abs/mlflow.db --host 0.0.0.0 --port 5000), check the "
                              f"address, or use {fix_db}") from exc
    return uri


# MLflow's REST client retries a refused connection 7 times with backoff factor 2 (about 4 minutes
# per call) and waits 120 s for an answer: a server that is down would stall a training loop or a
# sweep driver that long per call. Our trackers queue failed calls and retry them later, so they
# ask MLflow to give up quickly. Values the user exported win.
FAIL_FAST_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def fail_fast_http(tracking_uri: str) -> None:
    """Short MLflow HTTP retries for a tracking server URI (see FAIL_FAST_HTTP); no-op for files/SQLite."""
    if tracking_uri.startswith(("http://", "https://")):
        for k, v in FAIL_FAST_HTTP.items():
            os.environ.setdefault(k, v)


# MLflow error codes that answer the request itself (an invalid value, a param already set to
# another value, a deleted run: "must be in the 'active' state", a run or model that does not exist):
# retrying the same call cannot succeed. Anything else may pass later: connection refused, timeouts,
# 5xx and 429 (INTERNAL_ERROR after the client's retries), "database is locked"
# (TEMPORARILY_UNAVAILABLE), and BAD_REQUEST, which the SQL store also gives for a pool timeout and a
# proxy for any plain-text 400 page.
REJECTED_TAG = "ipt.tracking_rejected"
REJECTED_FOR_GOOD = frozenset({"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"})


def rejected_for_good(exc: BaseException) -> bool:
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException) and exc.error_code in REJECTED_FOR_GOOD


class NullTracker:
    """Does nothing; used on non-zero ranks and when tracking is disabled."""

    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def log_inputs(self, datasets: list[dict]) -> None: ...
    def log_model(self, name: str, files: list[str | Path], *, params: dict | None = None,
                  tags: dict | None = None, metrics: dict | None = None, step: int = 0) -> None: ...
    def supersede(self, run_id: str) -> None: ...
    def flush(self) -> None: ...
    def end(self, status: str = "FINISHED") -> None: ...


class MLflowTracker:
    """One MLflow run. Calls that fail (server down, DB locked) are kept and retried later; a call
    MLflow refuses for good (`rejected_for_good`) is dropped and named in the run's tag
    `ipt.tracking_rejected`."""

    def __init__(self, tracking_uri: str, experiment: str, run_name: str | None = None,
                 parent_run_id: str | None = None, run_id: str | None = None, tags: dict | None = None) -> None:
        from mlflow import MlflowClient

        fail_fast_http(tracking_uri)
        self.client = MlflowClient(tracking_uri)
        self.tracking_uri = tracking_uri
        if run_id is not None:
            self.run_id = run_id
        else:
            exp_id = get_or_create_experiment(self.client, experiment, tracking_uri)
            all_tags = dict(tags or {})
            if parent_run_id:
                all_tags["mlflow.parentRunId"] = parent_run_id
            if run_name:
                all_tags["mlflow.runName"] = run_name
            self.run_id = self.client.create_run(exp_id, run_name=run_name,
                                                 tags={k: str(v) for k, v in all_tags.items()}).info.run_id
        self._pending: list[tuple[str, tuple, dict]] = []
        self.model_ids: list[str] = []  # LoggedModels written by this tracker
        self.rejected: list[str] = []  # calls MLflow refused for good ("<call>: <why>"), see `flush`

    def _call(self, name: str, *args, **kwargs) -> None:
        self._pending.append((name, args, kwargs))
        self.flush()

    def flush(self, retries: int = 1, wait: float = 0.0) -> bool:
        """Send queued calls in order; returns True when nothing is left pending."""
        for attempt in range(retries):
            while self._pending:
                name, args, kwargs = self._pending[0]
                try:
                    getattr(self, "_do_" + name)(*args, **kwargs)
                except Exception as exc:  # noqa: BLE001 - tracking must never kill training
                    if not rejected_for_good(exc):
                        log.warning("MLflow %s failed (%s); will retry", name, exc)
                        break
                    # MLflow refused the call itself (e.g. a param logged again with another value):
                    # a retry gets the same answer, and kept at the head it would block every later call.
                    self._pending.pop(0)
                    why = first_line(exc)
                    if name == "tags" and REJECTED_TAG in args[0]:  # our own note (the run is gone, say)
                        log.warning("MLflow run %s: could not tag it %s (%s)", self.run_id, REJECTED_TAG, why)
                        continue
                    self.rejected.append(f"{name}: {why}")
                    log.error("MLflow rejected %s for run %s (%s); not retried, the run's later calls go on",
                              name, self.run_id, why)
                    self._tag_rejected()
                    continue
                self._pending.pop(0)
            if not self._pending:
                return True
            if wait:
                time.sleep(wait)
        return not self._pending

    def _tag_rejected(self) -> None:
        """Queue the tag `ipt.tracking_rejected` (how many calls were dropped, the first reason): the
        run's record is incomplete, said where the run is looked at. One queued at a time."""
        self._pending = [c for c in self._pending if not (c[0] == "tags" and REJECTED_TAG in c[1][0])]
        self._pending.append(("tags", ({REJECTED_TAG: f"{len(self.rejected)} logging calls rejected by MLflow; "
                                                      f"first: {self.rejected[0]}"},), {}))

    def _do_params(self, params: dict) -> None:
        send_params(self.client, self.run_id, params)

    def _do_metrics(self, metrics: dict, step: int | None) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(metric_key(k), float(v), ts, step or 0) for k, v in metrics.items()
                 if v is not None and v == v]  # noqa: PLR0124 - v != v only for NaN: drop NaNs (None: a NaN read back from JSON)
        for i in range(0, len(items), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=items[i : i + MAX_METRICS_PER_BATCH])

    def _do_artifact(self, path: str, artifact_path: str | None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def _do_tags(self, tags: dict) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:MAX_VALUE_LEN]) for k, v in tags.items()]
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=items[i : i + MAX_PARAMS_PER_BATCH])

    def _do_inputs(self, datasets: list[dict]) -> None:
        items = dataset_inputs(datasets)
        for i in range(0, len(items), MAX_DATASETS_PER_CALL):
            self.client.log_inputs(self.run_id, datasets=items[i : i + MAX_DATASETS_PER_CALL])

    def _do_model(self, name: str, files: list[str], params: dict, tags: dict, metrics: dict, step: int,
                  state: dict) -> None:
        # `state` keeps the model id across retries: a retry after a failed upload continues that
        # model instead of creating a second one.
        from mlflow.entities import LoggedModelOutput, Metric

        if state.get("model_id") is None:
            exp_id = self.client.get_run(self.run_id).info.experiment_id
            state["model_id"] = self.client.create_logged_model(
                exp_id, name=name, source_run_id=self.run_id, model_type=MSF_MODEL_TYPE,
                params={k: str(v)[:MAX_VALUE_LEN] for k, v in params.items()},
                tags={k: str(v)[:MAX_VALUE_LEN] for k, v in tags.items()}).model_id
        model_id = state["model_id"]
        for f in files:
            self.client.log_model_artifact(model_id, f)
        if metrics:
            ts = int(time.time() * 1000)
            items = [Metric(metric_key(k), float(v), ts, step, model_id=model_id)
                     for k, v in metrics.items() if math.isfinite(v)]
            self.client.log_batch(self.run_id, metrics=items)
        self.client.finalize_logged_model(model_id, "READY")
        self.client.log_outputs(self.run_id, [LoggedModelOutput(model_id, step)])
        self.model_ids.append(model_id)

    def _do_end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)
        if self.tracking_uri.startswith(("http://", "https://")):  # MLflow's own "View run" line is off
            exp = self.client.get_run(self.run_id).info.experiment_id  # in quiet mode (console.py)
            log.info("MLflow run: %s/#/experiments/%s/runs/%s", self.tracking_uri.rstrip("/"), exp, self.run_id)

    def log_params(self, params: dict[str, Any]) -> None:
        self._call("params", params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._call("metrics", metrics, step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call("artifact", str(path), artifact_path)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._call("tags", tags)

    def log_inputs(self, datasets: list[dict]) -> None:
        """Dataset inputs of this run (see `draw_dataset`)."""
        if datasets:
            self._call("inputs", datasets)

    def log_model(self, name: str, files: list[str | Path], *, params: dict | None = None,
                  tags: dict | None = None, metrics: dict | None = None, step: int = 0) -> None:
        """`files` as a READY `LoggedModel` named `name` whose source run is this run (listed in the
        run's outputs), with model params, tags and metrics. The files must stay until it is sent."""
        self._call("model", name, [str(f) for f in files], dict(params or {}), dict(tags or {}),
                   dict(metrics or {}), int(step), {})

    def supersede(self, run_id: str) -> None:
        """This run continues the work of `run_id`, whose process stopped (killed: it never ended its run):
        that run is marked KILLED if still RUNNING, and the two runs name each other in tags."""
        if run_id and run_id != self.run_id:
            self._call("supersede", run_id)

    def _do_supersede(self, run_id: str) -> None:
        self.client.set_tag(self.run_id, "ipt.continues_run", run_id)
        try:  # the old run may be gone (deleted, another store): never block this run's own calls
            self.client.set_tag(run_id, "ipt.superseded_by", self.run_id)
            if self.client.get_run(run_id).info.status == "RUNNING":
                self.client.set_terminated(run_id, "KILLED")
        except Exception as exc:  # noqa: BLE001 - a courtesy to the old run only
            log.warning("MLflow: could not mark run %s as superseded by %s (%s)", run_id, self.run_id, exc)

    def end(self, status: str = "FINISHED") -> None:
        self._call("end", status)
        if not self.flush(retries=5, wait=2.0):
            log.error("MLflow run %s: %d logging calls could not be sent", self.run_id, len(self._pending))


# MLflow's limits (mlflow.utils.validation): per log_batch call 1000 metrics, 100 params, 100 tags;
# param values up to 6000 characters; dataset digests up to 36, names up to 500.
MAX_METRICS_PER_BATCH, MAX_PARAMS_PER_BATCH, MAX_VALUE_LEN = 1000, 100, 6000
MAX_DATASETS_PER_CALL = 1000
MSF_MODEL_TYPE = "ipt-msf-autoencoder"
MSF_MODEL_FILES = ("autoencoder.safetensors", "msf.json")  # what `save_msf_checkpoint` writes


def draw_dataset(cfg: IPTConfig, task: str, data_seed: int | None, digest: str, rows: int | None = None,
                 context: str = "training") -> dict:
    """One task's few-shot draw as an MLflow dataset input (a plain dict; `dataset_inputs` builds
    the entities): name `<task>@<data seed>` (`<task>@all` when no seed picks the draw, see
    `provenance.draw_seed`), digest = `provenance.split_digest` of its training split (nothing is
    read here), source = where the task's files are, profile = its number of training examples.
    """
    seed = draw_seed(cfg, data_seed)
    if cfg.data.format == "hf":
        source_type, source = "huggingface", {"path": cfg.data.data_dir}
    else:
        root = Path(cfg.data.data_dir).expanduser() if cfg.data.data_dir else demo_data_dir(cfg)
        source_type, source = "local", {"uri": str(root.resolve() / task)}
    return {"name": f"{task}@{'all' if seed is None else seed}", "digest": digest, "source_type": source_type,
            "source": json.dumps({**source, "data_seed": seed, "split": "train"}),
            "profile": None if rows is None else json.dumps({"num_rows": rows}), "context": context}


def log_raw_draws(tracker, cfg: IPTConfig, raw: dict) -> None:
    """A single-stage `ipt pt` / `ipt ist` run's dataset inputs: the training draw of each task of
    `raw` (task -> TaskData, as `load_raw` returns for `cfg.data.data_seed`). No tracker: nothing."""
    from ipt_dist.provenance import split_digest

    if tracker is not None and raw:
        tracker.log_inputs([draw_dataset(cfg, t, cfg.data.data_seed, split_digest(d.train), len(d.train))
                            for t, d in raw.items()])


def dataset_inputs(datasets: list[dict]) -> list:
    """MLflow `DatasetInput`s of `draw_dataset` dicts, context tag `mlflow.data.context`."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    return [DatasetInput(Dataset(d["name"][:500], d["digest"][:36], d["source_type"], d["source"],
                                 profile=d.get("profile")), [InputTag(MLFLOW_DATASET_CONTEXT, d["context"])])
            for d in datasets]


def msf_datasets(cfg: IPTConfig, provenance: dict | None, sizes: dict[str, int] | None = None) -> list[dict]:
    """The training draws of an MSF run as dataset inputs, from its provenance record (`msf_provenance`)."""
    data = (provenance or {}).get("data") or {}
    return [draw_dataset(cfg, t, data.get("data.data_seed"), digest, (sizes or {}).get(t))
            for t, digest in (data.get("train_digest") or {}).items()]


def _fit(values: list[str], limit: int = MAX_VALUE_LEN) -> str:
    """Comma-joined, cut to MLflow's value limit with a count of what was left out."""
    joined = ",".join(values)
    if len(joined) <= limit:
        return joined
    kept: list[str] = []
    for v in values:
        if len(",".join([*kept, v])) + 40 > limit:
            break
        kept.append(v)
    return ",".join(kept) + f",... (+{len(values) - len(kept)} more; all in msf.json)"


def log_msf_model(tracker, ckpt_dir: str | Path, name: str | None = None) -> None:
    """Log an exported MSF checkpoint (`autoencoder.safetensors` + `msf.json`) as a `LoggedModel`
    of the tracker's run, found with e.g. `mlflow.search_logged_models(filter_string="params.d = '4'")`.

    Params: d, backbone, tasks (comma-joined; cut with a count beyond MLflow's 6000 characters),
    n_tasks, tasks_digest, data_seed, prompt_len, hidden, mid_dim, provenance_digest (the
    provenance fingerprint of msf.json, which the model's own msf.json holds in full). Metric:
    best_dev at its step. Never raises: a checkpoint without a readable msf.json is skipped with a
    warning, and MLflow failures are queued and retried like every tracker call (a refusal for good
    is dropped, `MLflowTracker.flush`).
    """
    if getattr(tracker, "run_id", None) is None:  # NullTracker: nothing to log, nothing to read
        return
    try:
        meta = json.loads((Path(ckpt_dir) / "msf.json").read_text())
    except (OSError, ValueError) as exc:
        log.warning("MLflow: MSF checkpoint %s not logged as a model (%s)", ckpt_dir, exc)
        return
    prov = meta.get("provenance") or {}
    tasks = [str(t) for t in meta.get("tasks") or []]
    prov_digest = record_digest(prov) if prov else "none"
    params = {"d": meta.get("d"), "backbone": meta.get("backbone"), "tasks": _fit(tasks),
              "n_tasks": len(tasks), "tasks_digest": hashlib.sha1(json.dumps(tasks).encode()).hexdigest()[:16],
              "data_seed": (prov.get("data") or {}).get("data.data_seed"),
              "prompt_len": meta.get("prompt_len"), "hidden": meta.get("hidden"), "mid_dim": meta.get("mid_dim"),
              "provenance_digest": prov_digest}
    tags = {"ipt.stage": "msf", "ipt.provenance_digest": prov_digest}
    metrics = {"best_dev": meta["best_dev"]} if isinstance(meta.get("best_dev"), (int, float)) else {}
    files = [Path(ckpt_dir) / f for f in MSF_MODEL_FILES if (Path(ckpt_dir) / f).is_file()]
    tracker.log_model(name or f"msf-d{meta.get('d')}", files,
                      params={k: v for k, v in params.items() if v is not None}, tags=tags, metrics=metrics,
                      step=int(meta.get("step") or 0))


def metric_key(k: str) -> str:
    """`k` as an MLflow key: MLflow allows alphanumerics and `_ - . space /`; task names and summary
    columns hold other characters (`@`, `:`), which become `_`."""
    return "".join(c if c.isalnum() or c in "_-. /" else "_" for c in k)


def send_params(client, run_id: str, params: dict[str, Any]) -> None:
    """Log `params` in as many `log_batch` calls as MLflow's limit (100 per call) needs; values are
    cut to MLflow's 6000 characters."""
    from mlflow.entities import Param

    items = [Param(k, str(v)[:MAX_VALUE_LEN]) for k, v in params.items()]
    for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=items[i : i + MAX_PARAMS_PER_BATCH])


def artifact_location(tracking_uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: next to an SQLite database (`mlartifacts/`), not
    MLflow's default ./mlruns under whatever the current directory is; None (MLflow's choice) otherwise."""
    if not tracking_uri.startswith("sqlite:///") or tracking_uri.endswith(":memory:"):
        return None
    return (Path(tracking_uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()


def get_or_create_experiment(client, name: str, tracking_uri: str | None = None) -> str:
    """The id of the experiment `name`, created once (from one process; safe against races).

    With an SQLite `tracking_uri` its artifacts go next to the database (`artifact_location`).
    An experiment deleted in the UI (still in the store, where no run can be created) is restored,
    with a warning: the config names it, and a sweep resuming its parent run needs it back.
    """
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            log.warning("MLflow experiment %r (id %s) was deleted: restored, so this run can be logged to it. "
                        "To start afresh instead, set tracking.experiment to a new name", name, exp.experiment_id)
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location(tracking_uri or ""))
    except Exception:  # another process created it first
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def make_tracker(cfg: IPTConfig, run_name: str, *, enabled: bool = True, tags: dict | None = None,
                 parent_run_id: str | None = None, log_config: bool = True):
    """A tracker for this process: MLflow when enabled in config, else NullTracker."""
    if not (enabled and cfg.tracking.enabled):
        return NullTracker()
    tracker = MLflowTracker(check_tracking_store(cfg), cfg.tracking.experiment,
                            cfg.tracking.run_name or run_name, parent_run_id=parent_run_id, tags=tags)
    if log_config:
        tracker.log_params(flatten_config(cfg))
    return tracker


# The MLflow UI's runs table loads 100 runs per page and nests a child under its parent only when
# sorted by date ("Created"); a loaded child's parent is fetched, but a stage none of whose runs is
# on the loaded page is not shown at all (mlflow#1896): newest first, a sweep's jobs fill the first
# page and hide the other stages. The UI also opens an experiment on its GenAI traces tab. A *shared
# view* (an experiment tag `mlflow.sharedViewState.<key>` that `.../runs?viewStateShareKey=<key>`
# opens) fixes the filter, the order and the columns, so these views land where a user needs them.
# (MLflow 3.17 reads its search facets and columns; pinned and expanded rows it does not share.)
#   - `ipt-pipeline`: every run, oldest first: the stages top to bottom in the order they ran, each
#     sweep expandable into its jobs. Complete on the first screen while every top-level run is
#     among the oldest 100 runs (the earlier stages' sweeps have fewer than ~100 jobs in all).
#   - `ipt-overview`: only the top-level runs, at any size, without the jobs.
VIEW_TAG = "mlflow.sharedViewState."
OVERVIEW_VIEW, JOBS_VIEW, PIPELINE_VIEW = "ipt-overview", "ipt-jobs", "ipt-pipeline"
UI_PAGE = 100  # runs per page of the UI's runs table
OVERVIEW_FILTER = "tags.`mlflow.parentRunId` IS NULL"
JOBS_FILTER = "tags.`ipt.role` = 'job'"
JOB_COLUMNS = (["params.`task`", "params.`setting`", "params.`d`", "params.`decoder`", "params.`lr`",
                "params.`data_seed`"] + [f"metrics.`{k}`" for k in ("best_dev", "test", "pt_test", "relative")])


def headline_metrics(metric_keys) -> list[str]:
    """The overview's columns: PT's mean test, MSF's best dev, every `<setting>_d<d>/mean_relative`.

    Sorted by name: the runs table (MLflow 3.17) shows its metric columns in that order anyway.
    """
    return sorted({k for k in metric_keys if k in ("pt/mean_test", "best_dev") or k.endswith("/mean_relative")})


def _view_state(search_filter: str, columns: list[str], *, oldest_first: bool = False) -> str:
    import json

    columns = ["attributes.`Duration`", *columns]
    return json.dumps({"searchFilter": search_filter, "orderByKey": "attributes.start_time", "orderByAsc": oldest_first,
                       "startTime": "ALL", "lifecycleFilter": "Active", "datasetsFilter": [],
                       "modelVersionFilter": "All Runs", "selectedColumns": columns})


def publish_ui_views(client, experiment_id: str) -> str:
    """Write the UI's shared views of this experiment; returns the URL path of the one to open.

    - `ipt-pipeline`: every run, oldest first, with the headline metrics and the jobs' columns: each
      stage's top-level run in the order the stages ran, each sweep expandable into its jobs.
    - `ipt-overview`: every top-level run (PT sweep, MSF per d, IST sweep, single-stage runs) with
      the headline metrics of all of them as columns, without the jobs.
    - `ipt-jobs`: the job runs, nested under their sweep, with task, setting, d, lr, seed and scores.
    The path returned is the pipeline view's when every top-level run is on its first page (the UI
    loads `UI_PAGE` runs), else the overview's. Re-publishing replaces all three (new headline
    columns appear as stages finish).
    """
    keys: set[str] = set()
    newest_top = 0
    token = None
    while True:  # top-level runs are few: one per stage and d, a few per pipeline
        page = client.search_runs([experiment_id], OVERVIEW_FILTER, max_results=1000, page_token=token)
        for run in page:
            keys.update(run.data.metrics)
            newest_top = max(newest_top, run.info.start_time or 0)
        token = page.token
        if not token:
            break
    overview = [f"metrics.`{k}`" for k in headline_metrics(keys)]
    client.set_experiment_tag(experiment_id, VIEW_TAG + OVERVIEW_VIEW, _view_state(OVERVIEW_FILTER, overview))
    client.set_experiment_tag(experiment_id, VIEW_TAG + JOBS_VIEW, _view_state(JOBS_FILTER, JOB_COLUMNS))
    client.set_experiment_tag(experiment_id, VIEW_TAG + PIPELINE_VIEW,
                              _view_state("", list(dict.fromkeys(overview + JOB_COLUMNS)), oldest_first=True))
    before = client.search_runs([experiment_id], f"attributes.start_time <= {newest_top}", max_results=UI_PAGE + 1)
    return ui_view_path(experiment_id, PIPELINE_VIEW if len(before) <= UI_PAGE else OVERVIEW_VIEW)


def publish_sweep_view(client, experiment_id: str, stage: str, sweep_key: str) -> str:
    """Write the shared view `ipt-<stage>-jobs`: this sweep's jobs, nested under its parent run
    (the UI fetches a loaded child's parent), newest 100 first; returns its URL path."""
    view = f"ipt-{stage}-jobs"
    search = f"tags.`ipt.sweep_key` = '{sweep_key}' and {JOBS_FILTER}"
    client.set_experiment_tag(experiment_id, VIEW_TAG + view, _view_state(search, JOB_COLUMNS))
    return ui_view_path(experiment_id, view)


def ui_view_path(experiment_id: str, view: str = OVERVIEW_VIEW) -> str:
    """The part of the MLflow UI's URL after host:port that opens a shared view of the runs table."""
    return f"/#/experiments/{experiment_id}/runs?viewStateShareKey={view}"
