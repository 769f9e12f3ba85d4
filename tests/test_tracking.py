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
