"""The Ray cluster as the sweeps and distributed MSF see it: one `init_ray`, the check that a task's
resources fit some node, and how many packs run at once.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from ipt_dist.config import ConfigError, IPTConfig

__all__ = ["check_resources", "init_ray", "task_slots"]


def init_ray(cfg: IPTConfig):
    """Join (or start) Ray once per driver process, for the sweeps and distributed MSF alike: the
    console's options (`ipt_dist.console.ray_init_options`: worker output forwarded only with
    --verbose, the workers' log directory) and the caller's SIGTERM handler kept. Returns `ray`.

    No `distributed.ray_address`: `ray job submit` sets RAY_ADDRESS; otherwise a running local
    cluster is joined or one is started.
    """
    import ray

    from ipt_dist import console

    if not ray.is_initialized():
        # A Ray started here inherits this environment: make the package importable by workers
        # even when it is not pip-installed (a cluster job gets it from --working-dir).
        root = str(Path(__file__).resolve().parents[2])
        paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
        if root not in paths:
            os.environ["PYTHONPATH"] = os.pathsep.join([root] + [p for p in paths if p])
        handler = signal.getsignal(signal.SIGTERM)
        console.adopt_loggers("ray")  # quiet: Ray's driver messages (dashboard URL, token auth) -> the log file
        ray.init(address=cfg.distributed.ray_address, **console.ray_init_options())
        # ray.init installs a SIGTERM handler that aborts the driver; keep the caller's (the entry
        # points turn `ray job stop` into a clean shutdown that closes the MLflow run as KILLED).
        if callable(handler) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, handler)
    return ray


def check_resources(ray, sw) -> None:
    """A task asking for more than any node has would wait forever: say so instead.

    Raises:
        ConfigError: no live node has sweep.num_cpus CPUs (or sweep.num_gpus GPUs).
    """
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for name, need in (("CPU", sw.num_cpus), ("GPU", sw.num_gpus)):
        if need > 0 and not any(r.get(name, 0) >= need for r in nodes):
            have = sorted({r.get(name, 0) for r in nodes})
            raise ConfigError(f"sweep.num_{name.lower()}s={need}: no node of this Ray cluster has that many "
                              f"{name}s (nodes have {have}). Fix: lower sweep.num_{name.lower()}s or add nodes")


def task_slots(ray, sw) -> int:
    """Packs the cluster runs at once: max_in_flight, capped by its CPUs / GPUs per task."""
    res = ray.cluster_resources()
    n = sw.max_in_flight
    for name, need in (("CPU", sw.num_cpus), ("GPU", sw.num_gpus)):
        if need > 0:
            n = min(n, int(res.get(name, 0) // need))
    return max(1, n)
