"""Tracking helpers that need no server: URI resolution and MLflow's HTTP retry defaults."""

from __future__ import annotations

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

    assert publish_ui_views(client, exp) == f"/#/experiments/{exp}/runs?viewStateShareKey=ipt-overview"
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
