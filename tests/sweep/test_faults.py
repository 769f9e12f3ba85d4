"""The crash hook of the sweep tests (`ipt_dist.testing.faults`): a real child process exits hard
exactly once per marker, and only for a pack that holds the named job or task."""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import sys
from ipt_dist.testing.faults import maybe_crash
maybe_crash(sys.argv[1] or None, sys.argv[2].split(","))
print("alive")
"""


def _run(request: str, names: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD, request, names], capture_output=True, text=True, check=False)


def test_the_named_pack_dies_once_and_others_never(tmp_path):
    marker = tmp_path / "crashed.marker"
    request = f"demo_topic:{marker}"
    other = _run(request, "ist-123,demo_sentiment")
    assert other.returncode == 0 and other.stdout.strip() == "alive" and not marker.exists()
    first = _run(request, "ist-456,demo_topic")
    assert first.returncode == 1 and first.stdout == "" and marker.read_text().startswith("crashed pid ")
    retry = _run(request, "ist-456,demo_topic")  # Ray's retry of the same pack: runs normally
    assert retry.returncode == 0 and retry.stdout.strip() == "alive"
    by_id = _run(f"ist-789:{tmp_path / 'other.marker'}", "ist-789,demo_parity")  # a job id matches too
    assert by_id.returncode == 1


def test_no_request_is_a_no_op(tmp_path, monkeypatch):
    from ipt_dist.testing.faults import SWEEP_CRASH_ENV, sweep_crash_request

    monkeypatch.delenv(SWEEP_CRASH_ENV, raising=False)
    assert sweep_crash_request() is None and _run("", "demo_topic").stdout.strip() == "alive"
    monkeypatch.setenv(SWEEP_CRASH_ENV, f"demo_topic:{tmp_path / 'm'}")
    assert sweep_crash_request() == f"demo_topic:{tmp_path / 'm'}"
