"""Every entry point turns a user error into one `error:` line and exit 2 (no traceback)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ipt_dist.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, UserError, one_line, run_entry

ROOT = Path(__file__).resolve().parents[1]


def _ray_job(name: str):
    spec = importlib.util.spec_from_file_location(f"ray_job_{name}", ROOT / "ray_jobs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


@pytest.fixture
def bad_config(tmp_path) -> Path:
    p = tmp_path / "bad.yaml"
    p.write_text("pt:\n  lrr: 0.3\n")  # a typo'd key: the config loader names it and the fix
    return p


def _entry_points(tmp_path: Path, bad: Path):
    from ipt_dist import cli

    out = str(tmp_path / "out")
    (tmp_path / "a_file").write_text("x")
    return {
        "ipt pt": lambda: cli.main(["pt", "--config", str(bad), "--out", out]),
        "ipt msf": lambda: cli.main(["msf", "--config", str(bad), "--out", out]),
        "ipt ist": lambda: cli.main(["ist", "--config", str(bad), "--out", out]),
        "ipt quickstart": lambda: cli.main(["quickstart", "--config", str(bad), "--out", out]),
        "ipt report": lambda: cli.main(["report", str(tmp_path / "no_such_run")]),
        "ipt demo-data": lambda: cli.main(["demo-data", str(tmp_path / "a_file")]),
        "ipt save-tiny": lambda: cli.main(["save-tiny", "tiny-t5", str(tmp_path / "a_file")]),
        "ray_jobs/pt_sweep.py": lambda: _ray_job("pt_sweep")(["--config", str(bad), "--out", out]),
        "ray_jobs/ist_sweep.py": lambda: _ray_job("ist_sweep")(["--config", str(bad), "--out", out]),
        "ray_jobs/msf.py": lambda: _ray_job("msf")(["--config", str(bad), "--out", out]),
    }


@pytest.mark.parametrize("name", ["ipt pt", "ipt msf", "ipt ist", "ipt quickstart", "ipt report", "ipt demo-data",
                                  "ipt save-tiny", "ray_jobs/pt_sweep.py", "ray_jobs/ist_sweep.py",
                                  "ray_jobs/msf.py"])
def test_every_entry_point_prints_one_error_line_and_exits_2(name, tmp_path, bad_config, capsys, monkeypatch):
    monkeypatch.delenv("IPT_DEBUG", raising=False)
    rc = _entry_points(tmp_path, bad_config)[name]()
    captured = capsys.readouterr()
    errors = [ln for ln in captured.err.splitlines() if ln.startswith("error:")]
    assert rc == EXIT_USER_ERROR, captured.err
    assert len(errors) == 1, captured.err
    assert "Traceback" not in captured.err + captured.out
    if "bad.yaml" in errors[0] or "lrr" in errors[0]:
        assert "pt.lrr" in errors[0] and "did you mean" in errors[0]


def test_the_installed_command_is_clean_and_debug_shows_the_traceback(tmp_path, bad_config):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("IPT_DEBUG", None)
    cmd = [sys.executable, "-m", "ipt_dist.cli", "pt", "--config", str(bad_config), "--out", str(tmp_path / "o")]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.strip()] == [r.stderr.strip()]  # one line in all
    assert r.stderr.startswith("error: ") and "pt.lrr" in r.stderr
    r = subprocess.run(cmd + ["--debug"], capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    assert r.returncode == 2 and "Traceback" in r.stderr and "ConfigError" in r.stderr


def test_multi_line_problem_lists_become_one_line():
    assert one_line("invalid sweep:\n  - a is bad\n  - b is bad") == "invalid sweep: a is bad; b is bad"
    assert one_line("single") == "single"


def test_interrupt_exits_130_with_what_is_kept(capsys):
    def stop():
        raise KeyboardInterrupt

    assert run_entry(stop) == EXIT_INTERRUPTED
    assert "run the same command again to resume" in capsys.readouterr().err


def test_other_exceptions_keep_their_traceback():
    def bug():
        raise RuntimeError("a bug, not a user error")

    with pytest.raises(RuntimeError):
        run_entry(bug)


def test_project_errors_are_user_errors():
    from ipt_dist.artifacts import ArtifactError
    from ipt_dist.config import ConfigError
    from ipt_dist.data.tasks import DataError
    from ipt_dist.modeling.backbone import BackboneError

    for cls in (ArtifactError, ConfigError, DataError, BackboneError):
        assert issubclass(cls, UserError) and issubclass(cls, ValueError)


def test_a_failed_stage_is_one_line_and_exit_1(capsys):
    from ipt_dist.errors import StageFailed

    def failed():
        raise StageFailed("stage 0: 2 PT jobs failed (x/failures.jsonl); run the same command again")

    assert run_entry(failed) == 1
    assert capsys.readouterr().err.startswith("error: stage 0: 2 PT jobs failed")
