"""The console shows this project's messages and library errors; everything else goes to
<out>/logs/ipt.log; --verbose restores it all."""

from __future__ import annotations

import logging
import os
import warnings

import pytest

from ipt_dist import console


@pytest.fixture
def clean_logging(monkeypatch):
    """Each test configures logging from scratch; the test session's setup is restored after."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, dict(console._state), dict(os.environ))
    for key in (console.VERBOSE_ENV, console.LOG_DIR_ENV, "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"):
        os.environ.pop(key, None)  # an earlier test's entry point may have set them in this process
    console._state.update(verbose=False, log_dir=None, console=None, file=None, worker=None)
    # An earlier in-process entry point may have left warnings captured while pytest since restored
    # warnings.showwarning: logging would then believe it captures and never hook in again.
    logging.captureWarnings(False)
    yield
    for h in root.handlers[:]:
        if h not in saved[0]:
            root.removeHandler(h)
            h.close()
    root.setLevel(saved[1])
    console._state.clear()
    console._state.update(saved[2])
    os.environ.clear()
    os.environ.update(saved[3])
    logging.captureWarnings(False)


def _emit():
    """One record of each kind: ours (info, warning), a library's (info, error), a Python warning."""
    logging.getLogger("ipt_dist.distributed.fanout").info("pt sweep: 1/2 jobs done")
    logging.getLogger("ipt_dist.data").warning("task x: 3 targets were cut")
    logging.getLogger("somelib.db").info("Creating initial database tables...")
    logging.getLogger("somelib.core").error("connection lost")
    logging.getLogger("transformers.modeling_utils").warning("Some weights were not initialized")
    with warnings.catch_warnings():  # earlier tests' filters (or the once-per-location registry) must not hide it
        warnings.simplefilter("always")
        warnings.warn("`all_gather_into_tensor` is deprecated", FutureWarning, stacklevel=1)


def test_quiet_console_shows_the_project_and_errors_the_log_file_has_everything(clean_logging, tmp_path, capsys):
    console.setup()
    log_file = console.log_to(tmp_path / "run")
    _emit()
    err = capsys.readouterr().err
    assert "pt sweep: 1/2 jobs done" in err and "warning: task x: 3 targets were cut" in err
    assert "error: connection lost" in err  # a library's error is never hidden
    assert "Creating initial" not in err and "deprecated" not in err and "Some weights" not in err
    assert log_file == tmp_path / "run" / "logs" / "ipt.log"
    text = log_file.read_text()
    for line in ("pt sweep: 1/2 jobs done", "Creating initial database tables", "connection lost",
                 "all_gather_into_tensor", "Some weights were not initialized"):  # a library's warning is kept
        assert line in text
    assert console.ray_init_options() == {"log_to_driver": False, "runtime_env": {"env_vars": {
        "IPT_VERBOSE": "0", "IPT_LOG_DIR": str(tmp_path / "run" / "logs")}}}
    os.environ["IPT_VERBOSE"] = "0"  # set by the user (or a submitted job's runtime_env): not set twice
    assert console.worker_env() == {"IPT_LOG_DIR": str(tmp_path / "run" / "logs")}
    # MLflow's two "View run ... at: <url>" stdout lines per terminated run (http tracking URIs) are off
    assert os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] == "true"


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_verbose_console_shows_everything_and_ray_forwards_workers(clean_logging, tmp_path, capsys):
    console.setup(verbose=True)
    console.log_to(tmp_path / "run")
    _emit()
    err = capsys.readouterr().err
    assert "Creating initial database tables" in err and "pt sweep: 1/2 jobs done" in err
    assert console.ray_init_options()["log_to_driver"] is True
    assert "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT" not in os.environ


def test_worker_logging_goes_to_the_run_log_directory(clean_logging, tmp_path, monkeypatch):
    monkeypatch.setenv(console.LOG_DIR_ENV, str(tmp_path / "logs"))
    console.setup_worker()
    console.setup_worker()  # once per process: a reused worker does not add a second handler
    logging.getLogger("ipt_dist.train.packed").info("pt pack of 8: step 10/20")
    lines = (tmp_path / "logs" / "workers.log").read_text().splitlines()
    assert len(lines) == 1 and "pt pack of 8: step 10/20" in lines[0] and " pid " in lines[0]
