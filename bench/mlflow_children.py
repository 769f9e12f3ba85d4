"""Driver-side cost of one sweep child run in MLflow, per child, on a fresh SQLite store.

    PYTHONPATH=. python bench/mlflow_children.py --children 40 --curve 20 --modes per_value tracker

Writes N fake finished jobs (the params of a real IST record, a dev and a train-loss curve of
--curve points each, the scalar scores, a 4 KiB param file as the artifact) as child runs of one
parent, the way each mode does it, into its own store, and reports seconds per child:

  per_value: one MLflow call per param, metric value and tag (log_param / log_metric / set_tag),
             the naive way, for reference;
  tracker:   `SweepTracker.log_job` of this checkout (batched: `log_batch` within MLflow's limits),
             with the job's draw as a dataset input where the tracker supports it;
  tracker_no_inputs: the same without dataset inputs (the batching alone).

`--tracker-module FILE` times another copy of sweep_tracking.py as mode `tracker_old` (e.g.
`git show main:ipt_dist/distributed/sweep_tracking.py > /tmp/old.py`), so two versions are
measured side by side in one process on the same machine load. Modes run interleaved in rounds.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def fake_records(n: int, curve: int, tag: str) -> list[dict]:
    tasks = ["demo_sentiment", "demo_topic", "demo_parity", "demo_copy_first"]
    return [{"job_id": f"ist-{tag}-{i:05d}", "task": tasks[i % 4], "role": "ist", "kind": "ist",
             "setting": "ist_seen_new", "seen": True, "data_seed": 13, "seed": 13, "lr": 0.3, "d": 4,
             "decoder": "msf", "msf_run_id": "0" * 32, "metric": "acc", "backbone": "arch:t5",
             "best_dev": 0.5, "test": 0.25, "best_step": 10, "seconds": 1.5,
             "dev_curve": [[5 * (k + 1), 0.1 + k / curve] for k in range(curve)],
             "loss_curve": [[5 * (k + 1), 2.0 - k / curve] for k in range(curve)]} for i in range(n)]


def log_per_value(client, exp_id: str, parent: str, rec: dict, param: Path, pt: float, params: tuple) -> None:
    """Everything `SweepTracker` writes for a child, one value per call."""
    run_id = client.create_run(exp_id, run_name=rec["job_id"]).info.run_id
    for k, v in {"mlflow.parentRunId": parent, "ipt.role": "job", "ipt.job_id": rec["job_id"],
                 "ipt.task": rec["task"]}.items():
        client.set_tag(run_id, k, v)
    for k in params:
        if rec.get(k) is not None:
            client.log_param(run_id, k, rec[k])
    for name, curve in (("dev", rec["dev_curve"]), ("train_loss", rec["loss_curve"])):
        for step, v in curve:
            client.log_metric(run_id, name, v, step=step)
    for k in ("best_dev", "test", "best_step", "seconds"):
        client.log_metric(run_id, k, rec[k])
    client.log_metric(run_id, "pt_test", pt)
    client.log_metric(run_id, "relative", rec["test"] / pt)
    client.log_artifact(run_id, str(param), "params")
    client.set_tag(run_id, "ipt.logged", "1")
    client.set_terminated(run_id, "FINISHED")


def run_mode(mode: str, module, records: list[dict], tmp: Path, cfg) -> float:
    """Seconds per child of `records` written by `mode` into a fresh store under `tmp`."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    tracker = module.SweepTracker(uri, "bench", module.sweep_key("ist", tmp), "ist-sweep", "ist", tmp)
    tracker.start(cfg)  # experiment + parent: not timed
    if mode != "tracker_no_inputs" and hasattr(tracker, "use_train_digests"):  # a dataset input per child
        draws = {(r["task"], r["data_seed"]): ("0123456789abcdef", 6) for r in records}
        tracker.use_train_digests(cfg, draws)
    param = tmp / "z.safetensors"
    param.write_bytes(b"\0" * 4096)
    client = MlflowClient(uri)
    t0 = time.perf_counter()
    for rec in records:
        if mode == "per_value":
            log_per_value(client, tracker.experiment_id, tracker.parent_run_id, rec, param, 0.5,
                          module.PARAM_FIELDS)
        else:
            assert tracker.log_job(rec, param, 0.5), "a child was not written"
    return (time.perf_counter() - t0) / len(records)


def load_module(path: str):
    spec = importlib.util.spec_from_file_location("sweep_tracking_old", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    import logging

    from ipt_dist.config import load_config
    from ipt_dist.distributed import sweep_tracking

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--children", type=int, default=40, help="children per mode and round")
    p.add_argument("--curve", type=int, default=20, help="points per dev / train-loss curve")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--modes", nargs="+", default=["per_value", "tracker"],
                   choices=["per_value", "tracker", "tracker_no_inputs"])
    p.add_argument("--tracker-module", help="another sweep_tracking.py, timed as mode tracker_old")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    modules = {m: sweep_tracking for m in args.modes}
    if args.tracker_module:
        modules["tracker_old"] = load_module(args.tracker_module)
    times: dict[str, list[float]] = {m: [] for m in modules}
    for r in range(args.rounds):
        for mode, module in modules.items():
            with tempfile.TemporaryDirectory(prefix=f"mlflow_bench_{mode}_") as d:
                cfg = load_config(None, [f"output_dir={d}"])
                recs = fake_records(args.children, args.curve, f"{mode}{r}")
                times[mode].append(run_mode(mode, module, recs, Path(d), cfg))
    # On a shared machine the minimum over rounds is the least disturbed measurement.
    print(f"| mode | s per child: median of {args.rounds} rounds x {args.children} | min | all rounds |")
    print("|---|---|---|---|")
    for mode, ts in times.items():
        rounds = ", ".join(f"{t:.4f}" for t in ts)
        print(f"| {mode} | {statistics.median(ts):.4f} | {min(ts):.4f} | {rounds} |")


if __name__ == "__main__":
    main()
