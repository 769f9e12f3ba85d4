"""Node loss on a real multi-node Ray cluster on this machine (the driver side of test_node_loss.py).

    python -m tests.distributed.multinode sweep CONFIG.yaml REPORT.json
    python -m tests.distributed.multinode sweep_gpu CONFIG.yaml REPORT.json   # fake GPUs, PackRunner actors
    python -m tests.distributed.multinode msf CONFIG.yaml REPORT.json

Each case runs in a process of its own, started by the test: the pytest process may already hold
the session's single-node Ray (`ray_local`), and one process can be connected to one Ray only.
The cluster is `ray.cluster_utils.Cluster` (Ray's own test helper): a head node and worker nodes,
each a separate raylet with its own object store, all on this machine. `remove_node(node,
allow_graceful=False)` SIGKILLs a node's raylet and its processes (the workers on it exit with it),
which is what Ray sees when a machine is lost.

Layout: the head has 0 CPUs (it holds the driver, the GCS, the dashboard and Ray Train's
controller, which all ask for 0 CPUs), every worker node 1 CPU, so work can only run on the worker
nodes and a 2-worker group necessarily sits on two nodes; that also fits a 2-core machine.

Isolation from other Ray instances on the machine: everything lives under a short temp dir of
our own, and RAY_TMPDIR points there, because `Cluster` writes the "current cluster" address
file under Ray's default temp dir (/tmp/ray) and deletes it on shutdown: without it, a plain
`ray.init()` elsewhere on the machine would join this cluster, and another cluster's address file
would be deleted. `ray stop` is never called. The nodes are stopped by `Cluster.shutdown()`, and if
this process dies first, by the reaper each node starts (it kills the node when its parent exits).

The report (JSON) says what happened to the cluster; the test checks it with the output files.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

OBJECT_STORE = 100 * 1024 * 1024  # per node; Ray's minimum is ~75 MiB
REPLACE_AFTER_S = 8.0  # a lost node's replacement joins this long after the loss


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """A head (0 CPUs, with the dashboard: Ray Train V2 and the State API need it) and worker nodes."""

    def __init__(self, gpus_per_node: int = 0) -> None:
        self.gpus_per_node = gpus_per_node  # declared to Ray only (no CUDA needed): GPU sweeps use actors
        self.root = tempfile.mkdtemp(prefix="rn", dir="/tmp")  # short: Ray's unix socket paths live under it
        os.environ["RAY_TMPDIR"] = self.root  # the address file goes here, not to the shared /tmp/ray
        self.temp_dir = os.path.join(self.root, "ray")
        os.makedirs(self.temp_dir)
        self.cluster = None
        self.api = None

    def start(self, workers: int):
        import ray
        from ray.cluster_utils import Cluster

        port = _free_port()
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "temp_dir": self.temp_dir, "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": port, "object_store_memory": OBJECT_STORE})
        self.api = f"http://127.0.0.1:{port}"
        nodes = [self.add_node() for _ in range(workers)]
        ray.init(address=self.cluster.address, log_to_driver=True)
        return nodes

    def add_node(self):
        return self.cluster.add_node(num_cpus=1, num_gpus=self.gpus_per_node,
                                     object_store_memory=OBJECT_STORE)

    def remove_node(self, node) -> float:
        """SIGKILL the node's raylet and processes (not graceful: a lost machine). Returns the time."""
        self.cluster.remove_node(node, allow_graceful=False)
        return time.time()

    def shutdown(self) -> None:
        import ray

        try:
            ray.shutdown()
        finally:
            if self.cluster is not None:
                self.cluster.shutdown()
            shutil.rmtree(self.root, ignore_errors=True)


def _tasks(api: str, **filters) -> list:
    from ray.util.state import list_tasks

    try:
        return list_tasks(address=api, filters=[(k, "=", v) for k, v in filters.items()], detail=True,
                          raise_on_missing_output=False, limit=1000)
    except Exception:  # noqa: BLE001 - the State API may not answer while nodes come and go: ask again
        return []


def _actors(api: str, **filters) -> list:
    from ray.util.state import list_actors

    try:
        return list_actors(address=api, filters=[(k, "=", v) for k, v in filters.items()], detail=True,
                           raise_on_missing_output=False, limit=1000)
    except Exception:  # noqa: BLE001
        return []


def _attempt(t) -> dict:
    return {"task_id": t.task_id, "attempt": t.attempt_number, "state": t.state, "node_id": t.node_id,
            "worker_pid": t.worker_pid, "error_type": t.error_type}


# ----------------------------------------------------------------------------- sweep


def sweep_case(cfg_path: str, report: dict, gpus: int = 0) -> None:
    """A PT sweep on 2 worker nodes; the first worker node is removed while a pack runs on it.
    With `gpus` (sweep.num_gpus > 0 in the config) the packs run on `PackRunner` actors."""
    from ipt_dist.config import load_config
    from ipt_dist.distributed.fanout import run_sweep

    name = "PackRunner.run" if gpus else "run_pack"
    cluster = LocalCluster(gpus_per_node=gpus)
    report["ray_root"] = cluster.root  # removed again by the test once every process is gone
    try:
        doomed, survivor = cluster.start(workers=2)
        report.update(doomed=doomed.node_id, survivor=survivor.node_id)
        seen: dict = {}

        def remove_when_a_pack_runs_there() -> None:
            deadline = time.time() + 600
            while time.time() < deadline and not seen.get("stop"):
                running = [t for t in _tasks(cluster.api, name=name, state="RUNNING")
                           if t.node_id == doomed.node_id]
                if running:
                    seen["running"] = [_attempt(t) for t in running]
                    seen["removed_at"] = cluster.remove_node(doomed)
                    return
                time.sleep(0.2)

        killer = threading.Thread(target=remove_when_a_pack_runs_there, daemon=True)
        killer.start()
        t0 = time.time()
        result = run_sweep(load_config(cfg_path), stage="pt")
        seen["stop"] = True
        killer.join(timeout=60)
        report["sweep_seconds"] = time.time() - t0
        report["result"] = {"jobs_total": result.jobs_total, "jobs_started": result.jobs_started,
                            "jobs_failed": result.jobs_failed, "sweep_dir": str(result.sweep_dir),
                            "parent_run_id": result.parent_run_id}
        report["running_when_removed"] = seen.get("running", [])
        report["removed_after_s"] = seen["removed_at"] - t0 if "removed_at" in seen else None
        # Every attempt of the interrupted tasks: the first FAILED on the removed node, the retry elsewhere.
        report["attempts"] = {a["task_id"]: [_attempt(t) for t in _tasks(cluster.api, task_id=a["task_id"])]
                              for a in report["running_when_removed"]}
    finally:
        cluster.shutdown()


# ----------------------------------------------------------------------------- MSF


def msf_case(cfg_path: str, report: dict) -> None:
    """A 2-worker MSF on 2 worker nodes; one worker's node is removed after a committed checkpoint,
    a new node is added some seconds later: Ray Train restarts the group there (FailureConfig).

    The run trains in a thread and the cluster is changed from the main thread: `Cluster.add_node`
    installs a signal handler, which Python allows on the main thread only.
    """
    from ipt_dist.config import load_config
    from ipt_dist.distributed.msf import absolutize, run_distributed_msf
    from ipt_dist.distributed.msf_inputs import latest_committed_step

    cfg = absolutize(load_config(cfg_path))
    storage = Path(cfg.distributed.storage_path)
    cluster = LocalCluster()
    report["ray_root"] = cluster.root  # removed again by the test once every process is gone
    try:
        first, doomed = cluster.start(workers=2)
        report.update(first=first.node_id, doomed=doomed.node_id)
        outcome: dict = {}

        def train() -> None:
            try:
                outcome["summary"] = run_distributed_msf(cfg)
            except BaseException:  # noqa: BLE001 - reported, the test fails on it
                outcome["error"] = traceback.format_exc()

        t0 = time.time()
        trainer = threading.Thread(target=train, daemon=True)
        trainer.start()
        deadline = t0 + 600
        history = Path(cfg.output_dir) / "msf_dist" / "history.jsonl"
        while trainer.is_alive() and time.time() < deadline and "workers_before" not in report:
            if history.is_file() and history.stat().st_size:  # the group trains: where do its workers sit?
                workers = _actors(cluster.api, class_name="RayTrainWorker", state="ALIVE")
                if len(workers) == 2:
                    report["workers_before"] = [{"node_id": a.node_id, "pid": a.pid} for a in workers]
            time.sleep(0.2)
        while trainer.is_alive() and time.time() < deadline:
            runs = [p for p in storage.glob("msf-*") if p.is_dir()] if storage.is_dir() else []
            step = max((latest_committed_step(r) for r in runs), default=0)
            if step >= 2:  # a committed checkpoint to restart from: lose a worker's node now
                report["committed_before_removal"] = step
                report["removed_after_s"] = cluster.remove_node(doomed) - t0
                lines = history.read_text().splitlines()
                report["history_lines_at_removal"] = len(lines)
                # Capacity comes back only later: meanwhile the group cannot be placed (1 CPU left).
                time.sleep(REPLACE_AFTER_S)
                report["replacement"] = cluster.add_node().node_id
                report["added_after_s"] = time.time() - t0
                break
            time.sleep(0.1)
        trainer.join(timeout=max(1.0, deadline - time.time()))
        report["msf_seconds"] = time.time() - t0
        if "error" in outcome or trainer.is_alive():
            raise RuntimeError(outcome.get("error", "distributed MSF did not finish within 600 s"))
        report["summary"] = outcome["summary"]
        report["workers_all"] = [{"node_id": a.node_id, "state": a.state, "pid": a.pid}
                                 for a in _actors(cluster.api, class_name="RayTrainWorker")]
    finally:
        cluster.shutdown()


CASES = {"sweep": sweep_case, "sweep_gpu": lambda c, r: sweep_case(c, r, gpus=1), "msf": msf_case}


def main(argv: list[str]) -> int:
    case, cfg_path, report_path = argv
    report: dict = {"case": case}
    code = 0
    try:
        CASES[case](cfg_path, report)
    except BaseException:  # noqa: BLE001 - the test reads the report, whatever happened
        report["error"] = traceback.format_exc()
        code = 1
    Path(report_path).write_text(json.dumps(report, indent=2, default=str))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
