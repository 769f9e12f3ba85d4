"""Tracking without a server: URI resolution, MLflow's HTTP retry defaults, and on an SQLite store
the MLflow 3 entities (MSF LoggedModels, task draws as dataset inputs, batched child runs)."""

from __future__ import annotations

import json
import os

from ipt_dist.config import load_config
from ipt_dist.tracking import FAIL_FAST_HTTP, fail_fast_http, resolve_tracking_uri


def test_fail_fast_http_applies_to_servers_only_and_keeps_user_values(monkeypatch):
    for k in FAIL_FAST_HTTP:  # set first so that teardown restores the original state, then remove
        monkeypatch.setenv(k, "0")
        monkeypatch.delenv(k)
    fail_fast_http("sqlite:////tmp/x.db")
    assert not any(k in os.environ for k in FAIL_FAST_HTTP)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    fail_fast_http("http://127.0.0.1:5000")
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "5"  # the user's value wins
    from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES

    assert MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == 2  # what MLflow's REST client reads per call


def test_tracking_uri_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(None, [f"output_dir={tmp_path}"])
    assert resolve_tracking_uri(cfg) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://server:5000")
    assert resolve_tracking_uri(cfg) == "http://server:5000"
    cfg = load_config(None, [f"output_dir={tmp_path}", "tracking.tracking_uri=http://other:5000"])
    assert resolve_tracking_uri(cfg) == "http://other:5000"


def test_pipeline_msf_runs_log_to_the_pipeline_store(tmp_path, monkeypatch):
    """Each d's MSF has its own output dir but must log to the pipeline's MLflow store."""
    from ipt_dist.pipeline import _msf_config

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(None, [f"output_dir={tmp_path}", "tracking.enabled=true"])
    sub = _msf_config(cfg, 5)
    assert sub.output_dir == str(tmp_path / "msf_d5") and sub.msf.d == 5
    assert sub.tracking.tracking_uri == resolve_tracking_uri(cfg) == resolve_tracking_uri(sub)
    assert sub.tracking.run_name == "msf-d5" and sub.msf.prompts_dir == str(tmp_path / "prompts")


def _cfg(tmp_path, uri):
    return load_config(None, [f"output_dir={tmp_path / 'out'}", f"tracking.tracking_uri={uri}"])


def test_tracking_store_problems_are_clear_errors_before_any_work(tmp_path, monkeypatch):
    import time

    import pytest

    from ipt_dist.config import ConfigError
    from ipt_dist.tracking import check_tracking_store

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    (tmp_path / "a_dir").mkdir()
    cases = {
        f"sqlite:///{blocker}/x.db": "tracking.tracking_uri.*cannot write the SQLite database",  # like /etc/passwd/x.db
        str(tmp_path / "mlflow.db"): "a path without a scheme.*sqlite:////abs/path/mlflow.db",
        f"file://{tmp_path}/mlruns": "refuses the file store",
        f"sqlite:///{tmp_path / 'a_dir'}": "is a directory, not a database file",
        "http://127.0.0.1:9/": "no MLflow server answers.*mlflow server",
    }
    for uri, message in cases.items():
        t0 = time.perf_counter()
        with pytest.raises(ConfigError, match=message):
            check_tracking_store(_cfg(tmp_path, uri))
        assert time.perf_counter() - t0 < 10, uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    with pytest.raises(ConfigError, match="^MLFLOW_TRACKING_URI"):
        check_tracking_store(load_config(None, [f"output_dir={tmp_path}"]))
    ok = f"sqlite:///{tmp_path / 'new' / 'dir' / 'mlflow.db'}"
    assert check_tracking_store(_cfg(tmp_path, ok)) == ok  # a missing directory is created


def test_cli_refuses_a_bad_tracking_store_in_one_line(tmp_path, capsys):
    from ipt_dist.cli import main

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rc = main(["pt", "--out", str(tmp_path / "o"), "--set", "tracking.enabled=true",
               "--set", f"tracking.tracking_uri=sqlite:///{blocker}/x.db"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: tracking.tracking_uri") and "Traceback" not in err
    assert not (tmp_path / "o" / "prompts").exists()  # nothing trained


def test_headline_columns_are_the_stage_summaries():
    from ipt_dist.tracking import headline_metrics

    keys = ["ist_unseen_d8/mean_relative", "ist_unseen_d2/mean_relative", "msf_seen_d2/mean_relative",
            "ist_unseen_d2_random/mean_relative", "pt/mean_test", "best_dev", "lm_loss", "jobs_done",
            "ist_unseen_d2/mean_relative_ci_low", "pt_control/mean_relative", "relative", "dev_mean"]
    assert headline_metrics(keys) == [
        "best_dev", "ist_unseen_d2/mean_relative", "ist_unseen_d2_random/mean_relative",
        "ist_unseen_d8/mean_relative", "msf_seen_d2/mean_relative", "pt/mean_test", "pt_control/mean_relative"]


def test_ui_views_are_shared_view_tags_the_runs_table_opens(tmp_path):
    """The overview filters to top-level runs with the headline columns; a sweep's view to its jobs.
    (What the UI renders from them is checked in a real browser in tests/distributed/test_quickstart.py.)"""
    import json

    from mlflow import MlflowClient

    from ipt_dist.tracking import VIEW_TAG, publish_sweep_view, publish_ui_views

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("views")
    sweep = client.create_run(exp, run_name="ist-sweep", tags={"ipt.role": "sweep"}).info.run_id
    client.log_metric(sweep, "ist_unseen_d2/mean_relative", 0.9)
    client.log_metric(sweep, "ist_unseen_d2/mean_relative_ci_low", 0.8)
    job = client.create_run(exp, run_name="job", tags={"ipt.role": "job", "mlflow.parentRunId": sweep,
                                                      "ipt.sweep_key": "k1"}).info.run_id
    client.log_metric(job, "lm_loss", 1.0)  # a child's metric is no headline
    msf = client.create_run(exp, run_name="msf-d2").info.run_id
    client.log_metric(msf, "best_dev", 0.5)

    assert publish_ui_views(client, exp) == f"/#/experiments/{exp}/runs?viewStateShareKey=ipt-pipeline"
    assert publish_sweep_view(client, exp, "ist", "k1") == f"/#/experiments/{exp}/runs?viewStateShareKey=ipt-ist-jobs"
    tags = client.get_experiment(exp).tags
    overview = json.loads(tags[VIEW_TAG + "ipt-overview"])
    assert overview["selectedColumns"] == ["attributes.`Duration`", "metrics.`best_dev`",
                                           "metrics.`ist_unseen_d2/mean_relative`"]
    assert overview["orderByKey"] == "attributes.start_time"  # the UI nests children only in date order
    found = client.search_runs([exp], overview["searchFilter"])
    assert {r.info.run_name for r in found} == {"ist-sweep", "msf-d2"}
    jobs = json.loads(tags[VIEW_TAG + "ipt-ist-jobs"])
    assert [r.info.run_id for r in client.search_runs([exp], jobs["searchFilter"])] == [job]
    assert "metrics.`relative`" in jobs["selectedColumns"]
    pipeline = json.loads(tags[VIEW_TAG + "ipt-pipeline"])  # every run, oldest first, both column sets once
    assert pipeline["searchFilter"] == "" and pipeline["orderByAsc"] is True
    assert pipeline["orderByKey"] == "attributes.start_time"
    cols = pipeline["selectedColumns"]
    assert len(cols) == len(set(cols)) and {"metrics.`ist_unseen_d2/mean_relative`", "params.`task`"} <= set(cols)


def test_ui_link_is_the_overview_when_a_stage_is_past_the_first_page(tmp_path):
    """The pipeline view (oldest first) shows a stage only if its run is among the first page's runs:
    101 jobs of the first sweep push a later stage's run off it, so the link is the overview."""
    from mlflow import MlflowClient

    from ipt_dist.tracking import UI_PAGE, publish_ui_views

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("views")
    sweep = client.create_run(exp, run_name="pt-sweep", start_time=1000).info.run_id
    for i in range(UI_PAGE - 2):  # the sweep, its jobs and one later stage fill the first page exactly
        client.create_run(exp, run_name=f"j{i}", start_time=2000 + i, tags={"mlflow.parentRunId": sweep})
    client.create_run(exp, run_name="msf-d2", start_time=9000)
    assert publish_ui_views(client, exp).endswith("viewStateShareKey=ipt-pipeline")
    client.create_run(exp, run_name="ist-sweep", start_time=9001)  # the 101st run
    assert publish_ui_views(client, exp).endswith("viewStateShareKey=ipt-overview")


# ----------------------------------------------------------------------------- MLflow 3: models and datasets


def _seeded_msf_cfg(tiny_cfg, uri: str):
    """tiny_cfg on a seeded draw (train_size 6, data seed 42), tracking on, with stage-0 prompt files
    recording that draw (zeros: MSF only needs their shape and provenance here)."""
    import torch

    from ipt_dist.artifacts import prompt_path, save_prompt
    from ipt_dist.provenance import prompt_provenance
    from ipt_dist.stages.common import load_raw

    tiny_cfg.data.train_size, tiny_cfg.data.data_seed = 6, 42
    tiny_cfg.msf.steps, tiny_cfg.msf.eval_every = 2, 2
    tiny_cfg.tracking.enabled, tiny_cfg.tracking.tracking_uri = True, uri
    tiny_cfg.tracking.experiment = "models"
    raw = load_raw(tiny_cfg, tiny_cfg.data.tasks, 42)
    for t, task in raw.items():
        save_prompt(prompt_path(tiny_cfg.out / "prompts", t), torch.zeros(4, 64), backbone="tiny-t5",
                    provenance=prompt_provenance(tiny_cfg, task, 42))
    return raw


def test_msf_run_is_a_logged_model_with_its_training_draws_as_dataset_inputs(tiny_cfg, tmp_path, monkeypatch):
    """`ipt msf` with tracking: the autoencoder is a READY LoggedModel of the run, found by
    search_logged_models with d, backbone, tasks and the provenance digest as params and the
    checkpoint files as artifacts; each training task's draw is a dataset input of the run."""
    import mlflow
    from mlflow import MlflowClient

    from ipt_dist.provenance import record_digest, split_digest
    from ipt_dist.stages.msf import run_msf
    from ipt_dist.tracking import make_tracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    raw = _seeded_msf_cfg(tiny_cfg, uri)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # artifacts must go next to the database, not to ./mlruns
    tracker = make_tracker(tiny_cfg, "msf-d4")
    run_msf(tiny_cfg, tracker=tracker)
    tracker.end()
    meta = json.loads((tiny_cfg.out / "msf" / "msf.json").read_text())

    client = MlflowClient(uri)
    exp_id = client.get_experiment_by_name("models").experiment_id
    mlflow.set_tracking_uri(uri)
    [model] = mlflow.search_logged_models(experiment_ids=[exp_id], output_format="list",
                                          filter_string="params.d = '4' AND params.backbone = 'tiny-t5'")
    assert model.name == "msf-d4" and model.source_run_id == tracker.run_id and str(model.status) == "READY"
    p = model.params
    assert p["tasks"] == ",".join(tiny_cfg.data.tasks) and p["n_tasks"] == "3" and p["data_seed"] == "42"
    assert p["provenance_digest"] == record_digest(meta["provenance"]) == model.tags["ipt.provenance_digest"]
    assert {m.key: m.value for m in model.metrics} == {"best_dev": meta["best_dev"]}
    assert sorted(a.path for a in client.list_logged_model_artifacts(model.model_id)) == [
        "autoencoder.safetensors", "msf.json"]
    assert not (cwd / "mlruns").exists() and (tmp_path / "mlartifacts").is_dir()

    run = client.get_run(tracker.run_id)
    assert [o.model_id for o in run.outputs.model_outputs] == [model.model_id]
    got = {(d.dataset.name, d.dataset.digest, json.loads(d.dataset.profile)["num_rows"],
            {t.key: t.value for t in d.tags}["mlflow.data.context"]) for d in run.inputs.dataset_inputs}
    assert got == {(f"{t}@42", split_digest(raw[t].train), 6, "training") for t in tiny_cfg.data.tasks}
    assert got == {(f"{t}@42", meta["provenance"]["data"]["train_digest"][t], 6, "training")
                   for t in tiny_cfg.data.tasks}


def test_logged_model_failing_for_a_moment_is_retried_once_without_duplicates(tmp_path):
    """A blocked artifact store fails the upload: the call is queued, nothing raises, and the retry
    finishes the same model (one model, READY) instead of creating a second one."""
    import mlflow

    from ipt_dist.tracking import MLflowTracker, log_msf_model

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ckpt = tmp_path / "msf"
    ckpt.mkdir()
    (ckpt / "autoencoder.safetensors").write_bytes(b"weights")
    long_tasks = [f"task_{i:04d}_with_a_long_name" for i in range(400)]  # > 6000 characters joined
    (ckpt / "msf.json").write_text(json.dumps({"d": 8, "backbone": "b", "tasks": long_tasks, "best_dev": 0.5,
                                               "step": 3, "provenance": {"data": {"data.data_seed": 7}}}))
    tracker = MLflowTracker(uri, "retry", "msf-d8")
    (tmp_path / "mlartifacts").write_text("a file where the artifact directory should be")
    log_msf_model(tracker, ckpt)
    assert tracker._pending and not tracker.model_ids  # queued, not raised
    (tmp_path / "mlartifacts").unlink()
    assert tracker.flush()
    mlflow.set_tracking_uri(uri)
    exp_id = tracker.client.get_experiment_by_name("retry").experiment_id
    [model] = mlflow.search_logged_models(experiment_ids=[exp_id], output_format="list")
    assert tracker.model_ids == [model.model_id] and str(model.status) == "READY"
    assert len(model.params["tasks"]) <= 6000 and model.params["tasks"].endswith("more; all in msf.json)")
    assert model.params["n_tasks"] == "400" and model.params["data_seed"] == "7"


def test_sweep_children_carry_their_draw_as_a_dataset_input_and_batched_values(tmp_path, demo_dir):
    """The plan's data check digests each (task, draw) once; every child gets its draw as a dataset
    input (the same digest MSF and the prompts record for that draw), and its params, curves and
    scores in one batched call."""
    from types import SimpleNamespace

    from mlflow import MlflowClient

    from ipt_dist.distributed.sweep_tracking import PARAM_FIELDS, SweepTracker, sweep_key
    from ipt_dist.provenance import split_digest
    from ipt_dist.stages.common import load_raw
    from ipt_dist.sweep.plan import check_data_files as _check_data
    from tests.conftest import tiny_overrides

    cfg = load_config(None, tiny_overrides(tmp_path, demo_dir) + ["data.train_size=6", "data.data_seed=42"])
    jobs = [SimpleNamespace(task=t, data_seed=s) for t in ("demo_topic", "demo_parity") for s in (42, 13)]
    digests = _check_data(cfg, jobs)
    topic13 = load_raw(cfg, ["demo_topic"], 13)["demo_topic"]
    assert digests[("demo_topic", 13)] == (split_digest(topic13.train), 6)
    assert digests[("demo_topic", 13)] != digests[("demo_topic", 42)]  # another draw, another digest

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = SweepTracker(uri, "draws", sweep_key("ist", tmp_path), "ist-sweep", "ist", tmp_path)
    tracker.use_train_digests(cfg, digests)
    tracker.start(cfg)
    recs = [{"job_id": f"ist-{t}-{s}", "task": t, "role": "ist", "kind": "ist", "setting": "ist_seen_new",
             "seen": True, "data_seed": s, "seed": s, "lr": 0.1, "d": 4, "decoder": "msf", "msf_run_id": "r",
             "metric": "acc", "z_source": None, "backbone": "tiny-t5", "best_dev": 0.5, "test": 0.25,
             "best_step": 10, "seconds": 1.5, "dev_curve": [[5, 0.4], [10, 0.5]],
             "loss_curve": [[k, 2.0 - k / 10] for k in range(1, 11)]} for t, s in digests]
    recs.append({**recs[0], "job_id": "eval-topic", "role": "msf_eval", "kind": "msf_eval", "lr": None})
    assert tracker.catch_up(recs, tmp_path, {("demo_topic", 42): 0.5}) == len(recs)

    client = MlflowClient(uri)
    for rec in recs:
        run = client.get_run(tracker.children[rec["job_id"]])
        [inp] = run.inputs.dataset_inputs
        assert inp.dataset.name == f"{rec['task']}@{rec['data_seed']}"
        assert inp.dataset.digest == digests[(rec["task"], rec["data_seed"])][0]
        context = "evaluation" if rec["kind"] == "msf_eval" else "training"
        assert [(t.key, t.value) for t in inp.tags] == [("mlflow.data.context", context)]
        # the values the one-call-per-batch write must carry, exactly
        assert run.data.params == {k: str(rec[k]) for k in PARAM_FIELDS if rec.get(k) is not None}
        dev = client.get_metric_history(run.info.run_id, "dev")
        assert [(m.step, m.value) for m in dev] == [(5, 0.4), (10, 0.5)]
        assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 10
        scalars = {k: v for k, v in run.data.metrics.items() if k not in ("dev", "train_loss")}
        expected = {"best_dev": 0.5, "test": 0.25, "best_step": 10.0, "seconds": 1.5}
        if (rec["task"], rec["data_seed"]) == ("demo_topic", 42):
            expected |= {"pt_test": 0.5, "relative": 0.5}
        assert scalars == expected
        assert run.data.tags["ipt.logged"] == "1" and run.info.status == "FINISHED"


def test_a_deleted_experiment_is_restored_for_every_caller_with_a_warning(tmp_path, caplog):
    """One rule for the MLflowTracker (stages, distributed MSF) and the sweep tracker: an experiment
    deleted in the UI is restored (MLflow creates no run in a deleted experiment) and a warning
    says so; before, MLflowTracker failed on it while the sweep tracker restored it silently."""
    from mlflow import MlflowClient

    from ipt_dist.distributed.sweep_tracking import SweepTracker, sweep_key
    from ipt_dist.tracking import MLflowTracker, get_or_create_experiment

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = get_or_create_experiment(client, "gone", uri)
    assert get_or_create_experiment(client, "gone", uri) == exp  # found, not created twice
    assert client.get_experiment(exp).artifact_location == (tmp_path / "mlartifacts").as_uri()
    client.delete_experiment(exp)
    with caplog.at_level("WARNING", logger="ipt_dist.tracking"):
        tracker = MLflowTracker(uri, "gone", "pt")
    assert client.get_experiment(exp).lifecycle_stage == "active"
    assert client.get_run(tracker.run_id).info.experiment_id == exp
    assert "'gone' (id " in caplog.text and "was deleted: restored" in caplog.text

    client.delete_experiment(exp)
    cfg = load_config(None, [f"output_dir={tmp_path}"])
    sweep = SweepTracker(uri, "gone", sweep_key("pt", tmp_path), "pt-sweep", "pt", tmp_path)
    sweep.start(cfg, attempts=1)
    assert sweep.experiment_id == exp and sweep.parent_run_id is not None
    assert client.get_experiment(exp).lifecycle_stage == "active"


def test_metric_keys_and_param_batches_follow_mlflows_limits(tmp_path):
    from mlflow import MlflowClient

    from ipt_dist.tracking import get_or_create_experiment, metric_key, send_params

    assert metric_key("ist_seen_new@d4: mean/relative") == "ist_seen_new_d4_ mean/relative"
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.create_run(get_or_create_experiment(client, "p")).info.run_id
    params = {f"k{i:03d}": i for i in range(250)} | {"long": "x" * 7000}  # 3 batches; a value past 6000
    send_params(client, run, params)
    got = client.get_run(run).data.params
    assert len(got) == 251 and got["k249"] == "249" and got["long"] == "x" * 6000


def test_a_sweep_directory_started_again_at_the_same_path_gets_its_own_parent_run(tmp_path):
    """A sweep directory moved away (its results refused as another configuration's) and started
    again at the same path must not resume the old MLflow parent, whose children its summary no
    longer holds; a directory with results and no sweep_id (an older one) keeps its parent."""
    import hashlib
    import shutil

    from ipt_dist.config import load_config
    from ipt_dist.distributed.sweep_tracking import SWEEP_ID_FILE, make_sweep_tracker, sweep_key

    out = tmp_path / "run"
    sdir = out / "ist_sweep"
    sdir.mkdir(parents=True)
    cfg = load_config(None, [f"output_dir={out}", "tracking.enabled=true", "tracking.background=false",
                             f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db", "tracking.experiment=ids"])
    first = make_sweep_tracker(cfg, "ist", sdir)
    first.start(cfg)
    assert (sdir / SWEEP_ID_FILE).is_file()
    (sdir / "results.jsonl").write_text('{"job_id": "ist-1"}\n')
    again = make_sweep_tracker(cfg, "ist", sdir)  # the same directory resumes its parent
    again.start(cfg)
    assert again.parent_run_id == first.parent_run_id

    shutil.move(str(sdir), str(out / "ist_sweep.old"))  # moved away, started again at the same path
    sdir.mkdir()
    fresh = make_sweep_tracker(cfg, "ist", sdir)
    fresh.start(cfg)
    assert fresh.parent_run_id != first.parent_run_id

    legacy = tmp_path / "legacy" / "ist_sweep"  # results written before sweep_id existed: the old key
    legacy.mkdir(parents=True)
    (legacy / "results.jsonl").write_text('{"job_id": "ist-1"}\n')
    make_sweep_tracker(cfg, "ist", legacy)
    assert not (legacy / SWEEP_ID_FILE).exists()
    assert sweep_key("ist", legacy) == hashlib.sha1(f"ist|{legacy.resolve()}".encode()).hexdigest()[:16]


def test_superseding_a_run_that_is_gone_does_not_block_the_new_runs_logging(tmp_path):
    """`supersede` of a run this store does not hold (deleted, another store): a warning, and every
    later call of the new run still lands (MLflowTracker's queue sends calls in order)."""
    from mlflow import MlflowClient

    from ipt_dist.tracking import MLflowTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    old = MLflowTracker(uri, "sup", "msf")
    old.log_metrics({"loss": 2.0}, step=1)  # then its process dies: never ended, RUNNING
    new = MLflowTracker(uri, "sup", "msf")
    new.supersede("0" * 32)  # no such run
    new.supersede(old.run_id)
    new.log_metrics({"loss": 1.0, "dev/x": None}, step=2)  # None: a NaN read back from history.jsonl
    new.end("FINISHED")
    client = MlflowClient(uri)
    run = client.get_run(new.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics == {"loss": 1.0}
    assert run.data.tags["ipt.continues_run"] == old.run_id
    gone = client.get_run(old.run_id)
    assert gone.info.status == "KILLED" and gone.data.tags["ipt.superseded_by"] == new.run_id


def test_a_call_mlflow_rejects_for_good_does_not_block_the_runs_later_calls(tmp_path, caplog):
    """MLflow refuses a param logged again with another value (params are immutable). Retrying it
    cannot succeed: kept at the head of the queue it would hold back every later metric, tag and the
    run's end. It is dropped with an error line, and the run says its record is incomplete."""
    from ipt_dist.tracking import MLflowTracker

    tracker = MLflowTracker(f"sqlite:///{tmp_path}/mlflow.db", "rejected", "run")
    tracker.log_params({"lr": 0.1})
    tracker.log_params({"lr": 0.2})  # rejected: INVALID_PARAMETER_VALUE
    tracker.log_metrics({"loss": 1.5}, step=3)
    tracker.end()
    assert not tracker._pending and len(tracker.rejected) == 1 and tracker.rejected[0].startswith("params:")
    run = tracker.client.get_run(tracker.run_id)
    assert run.data.params == {"lr": "0.1"} and run.data.metrics == {"loss": 1.5}
    assert run.info.status == "FINISHED"
    assert run.data.tags["ipt.tracking_rejected"].startswith("1 logging calls rejected by MLflow; first: params:")
    assert "MLflow rejected params" in caplog.text


def test_only_mlflows_refusals_of_the_request_are_dropped_and_a_deleted_run_does_not_loop(tmp_path):
    """Transient answers stay queued (a locked SQLite DB, a 5xx/connection error after the client's
    retries, BAD_REQUEST: also a pool timeout or a proxy's 400 page); a run deleted in the UI refuses
    every call, its own rejected-tag included, and the queue still empties."""
    from mlflow.exceptions import MlflowException, RestException

    from ipt_dist.tracking import MLflowTracker, rejected_for_good

    assert rejected_for_good(RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "x"}))
    assert rejected_for_good(RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "x"}))
    for code in ("TEMPORARILY_UNAVAILABLE", "BAD_REQUEST", "INTERNAL_ERROR", "REQUEST_LIMIT_EXCEEDED"):
        assert not rejected_for_good(RestException({"error_code": code, "message": "x"})), code
    assert not rejected_for_good(MlflowException("API request to http://x failed with exception ..."))
    assert not rejected_for_good(OSError("disk"))

    tracker = MLflowTracker(f"sqlite:///{tmp_path}/mlflow.db", "deleted", "run")
    tracker.client.delete_run(tracker.run_id)
    tracker.log_metrics({"loss": 1.0})
    tracker.end()
    assert not tracker._pending and [r.split(":")[0] for r in tracker.rejected] == ["metrics", "end"]
