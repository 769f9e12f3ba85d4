"""`ipt_dist.distributed.cluster`: the one Ray init of the sweeps and distributed MSF, the resource
check and the task slots, on real Ray."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ipt_dist.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]

INIT = """
import signal, sys
from ipt_dist.config import load_config
from ipt_dist.distributed.cluster import init_ray

def mine(signum, frame):
    pass

signal.signal(signal.SIGTERM, mine)
ray = init_ray(load_config(None, ["distributed.ray_address=local"]))
print("KEPT" if signal.getsignal(signal.SIGTERM) is mine else "REPLACED", ray.is_initialized())
init_ray(load_config(None, ["distributed.ray_address=local"]))  # a second call joins nothing new
print("NODES", len(ray.nodes()))
ray.shutdown()
"""


@pytest.mark.distributed
@pytest.mark.slow
def test_init_ray_keeps_the_callers_sigterm_handler():
    """ray.init installs a SIGTERM handler that aborts the driver; the entry points' own handler (which
    turns `ray job stop` into a clean KILLED shutdown) must survive it, for sweeps and MSF alike: both
    call this one function (msf.py's `_init_ray` delegates here)."""
    tmp = tempfile.mkdtemp(prefix="rc")  # short: Ray's socket paths live under it
    env = {**os.environ, "RAY_TMPDIR": tmp, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run([sys.executable, "-c", INIT], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env,
                       check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "KEPT True" in r.stdout and "NODES 1" in r.stdout, r.stdout


@pytest.mark.distributed
def test_task_slots_and_resource_check_read_the_cluster(ray_local):
    from ipt_dist.distributed.cluster import check_resources, task_slots

    cpus = int(ray_local.cluster_resources()["CPU"])
    sw = load_config(None, ["sweep.max_in_flight=64", "sweep.num_cpus=1"]).sweep
    assert task_slots(ray_local, sw) == cpus  # capped by the CPUs
    sw.max_in_flight = 1
    assert task_slots(ray_local, sw) == 1  # capped by max_in_flight
    check_resources(ray_local, sw)
    sw.num_cpus = cpus + 1
    with pytest.raises(ConfigError, match=rf"sweep.num_cpus={cpus + 1}: no node of this Ray cluster has that many"):
        check_resources(ray_local, sw)
