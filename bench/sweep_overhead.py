"""End-to-end IST sweep through Ray + MLflow: K=1 (one job per Ray task) vs packed K.

    python bench/sweep_overhead.py --out /tmp/sweep_bench --packs 1 32

Builds the smoke sweep's inputs once (the stage-0 PT sweep: prompts and PT on every draw; MSF,
single process), then runs the same IST sweep (configs/sweep_smoke.yaml: 52 jobs) once per pack
size into its own directory
with its own MLflow store and a fresh local Ray (cold workers, as a submitted sweep starts), and
reports wall time, jobs/hour and the overhead share: the part of the Ray task slots' time
(wall x slots) not spent inside `train_pack`.
Slots = `task_slots`: max_in_flight capped by the cluster's CPUs / sweep.num_cpus. The overhead is split into
  driver:  the driver's own time before and after the fan-out (planning, data checks, MLflow
           parent run and catch-up, summary), when no pack runs;
  worker:  inside the Ray tasks but outside `train_pack` (imports and backbone load in a cold
           worker, tokenisation);
  ray+idle: the rest of the fan-out's slot time: Ray scheduling, worker start, argument and
           result transfer, and slots idle because no pack is left to run (the tail, the
           barrier before IPT-initialised PT).
Per-job MLflow logging runs in the driver while packs train, so it is not on the critical path
unless the driver falls behind (it would show as ray+idle).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    from ipt_dist.artifacts import read_jsonl
    from ipt_dist.config import load_config
    from ipt_dist.distributed.cluster import task_slots
    from ipt_dist.distributed.fanout import run_sweep
    from ipt_dist.stages.common import setup_logging
    from ipt_dist.sweep.smoke import prepare_smoke

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--packs", type=int, nargs="+", default=[1, 32])
    p.add_argument("--config", default=str(ROOT / "configs" / "sweep_smoke.yaml"))
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args()
    setup_logging(logging.WARNING)
    out = Path(args.out).resolve()
    base = load_config(args.config, [f"output_dir={out / 'inputs'}", *args.set])
    base = prepare_smoke(base, "ist", run_sweep)  # PT sweep (prompts, PT denominators) + MSF once, shared by all runs
    import ray

    if ray.is_initialized():  # the PT sweep started a Ray: each K below starts its own, cold
        ray.shutdown()

    rows = []
    for K in args.packs:
        # a fresh local Ray per K: every run starts with cold workers (imports, backbone load), as a
        # submitted sweep does, instead of inheriting the previous run's warm workers and cached backbone
        ray.init(num_cpus=os.cpu_count(), log_to_driver=False)
        run_dir = out / f"K{K}"
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.copytree(out / "inputs", run_dir, ignore=shutil.ignore_patterns("ist_sweep", "mlflow.db", "cache"))
        cfg = load_config(args.config, [f"output_dir={run_dir}", f"sweep.pack_size={K}", *args.set,
                                        f"tracking.tracking_uri=sqlite:///{run_dir / 'mlflow.db'}"])
        cfg.sweep.dims = {d: str(run_dir / Path(path).relative_to(out / "inputs")) for d, path in base.sweep.dims.items()}
        t0 = time.perf_counter()
        res = run_sweep(cfg, "ist")
        wall = time.perf_counter() - t0
        recs = read_jsonl(run_dir / "ist_sweep" / "results.jsonl")
        compute = sum(float(r.get("seconds") or 0) for r in recs)
        worker = sum(float(r.get("worker_seconds") or 0) for r in recs)
        slots = task_slots(ray, cfg.sweep)  # as the sweep's fan-out counts them
        budget = wall * slots
        driver = (res.timings["prepare"] + res.timings["finish"]) * slots
        rows.append({"K": K, "jobs": res.jobs_total, "wall_s": wall, "jobs_per_hour": 3600 * res.jobs_total / wall,
                     "train_pack_s": compute, "slots": slots, "overhead_share": max(0.0, 1 - compute / budget),
                     "driver_share": driver / budget, "worker_share": (worker - compute) / budget,
                     "ray_idle_share": max(0.0, budget - driver - worker) / budget,
                     "overhead_per_job_slot_s": max(0.0, budget - compute) / res.jobs_total,
                     "worker_busy_s": _busy_per_worker(recs), "timings": res.timings})
        print(json.dumps(rows[-1]), flush=True)
        ray.shutdown()
    base_rate = rows[0]["jobs_per_hour"]
    print("\n| K | jobs | wall (s) | jobs/hour | vs first | in train_pack (s) | overhead share | driver | worker "
          "| ray+idle | overhead per job (slot-s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['K']} | {r['jobs']} | {r['wall_s']:.1f} | {r['jobs_per_hour']:.0f} | "
              f"{r['jobs_per_hour'] / base_rate:.1f}x | {r['train_pack_s']:.1f} | {100 * r['overhead_share']:.1f}% | "
              f"{100 * r['driver_share']:.1f}% | {100 * r['worker_share']:.1f}% | {100 * r['ray_idle_share']:.1f}% | "
              f"{r['overhead_per_job_slot_s']:.2f} |")


def _busy_per_worker(recs: list[dict]) -> dict[str, float]:
    """Seconds each worker process (host:pid) spent in its Ray tasks: against the wall time, the
    gap shows where a slot sat idle (e.g. the tail after its last pack)."""
    busy: dict[str, float] = defaultdict(float)
    for r in recs:
        busy[r.get("worker", "?")] += float(r.get("worker_seconds") or 0)
    return {w: round(s, 1) for w, s in sorted(busy.items())}


if __name__ == "__main__":
    main()
