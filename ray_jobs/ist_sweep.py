"""IST sweep (stage 2, settings 1-5, baselines) fanned out as Ray tasks, tracked in MLflow.

    python ray_jobs/ist_sweep.py --smoke-test --out /tmp/ipt_smoke
    python ray_jobs/ist_sweep.py --config configs/ist_sweep.yaml --out /abs/path/runs/ist
    RAY_AUTH_MODE=token ray job submit --working-dir . -- \
        python ray_jobs/ist_sweep.py --config configs/ist_sweep.yaml --out /abs/path/runs/ist

Re-submitting with the same --out (and tracking URI) skips finished jobs; see docs/sweeps.md.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # a checkout works without `pip install`, also under `ray job submit`

STAGE = "ist"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", help="YAML config (default with --smoke-test: configs/sweep_smoke.yaml)")
    p.add_argument("--out", help="output directory (overrides output_dir); absolute under `ray job submit`")
    p.add_argument("--smoke-test", action="store_true",
                   help="tiny CPU sweep; trains the stage-0 prompts and MSF it needs first")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or "
                                          "sqlite:///<out>/mlflow.db)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set sweep.pack_size=8 (repeatable)")
    args = p.parse_args(argv)
    if args.config is None and not args.smoke_test:
        p.error("--config is required unless --smoke-test is given")
    return args


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from ipt_dist.config import load_config
    from ipt_dist.distributed.sweep import run_sweep
    from ipt_dist.stages.common import setup_logging

    setup_logging()
    overrides = list(args.set)
    if args.out:
        overrides.append(f"output_dir={args.out}")
    if args.tracking_uri:
        overrides.append(f"tracking.tracking_uri={args.tracking_uri}")
    cfg = load_config(args.config or ROOT / "configs" / "sweep_smoke.yaml", overrides)
    # `ray job stop` sends SIGTERM: turn it into KeyboardInterrupt so the driver cancels its Ray
    # tasks and closes the MLflow parent run as KILLED (a re-submission resumes the sweep).
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = run_sweep(cfg, stage=STAGE, smoke_test=args.smoke_test)
    except KeyboardInterrupt:
        print("sweep interrupted; re-submit the same command to resume it", file=sys.stderr)
        return 130
    print(result.summary.to_markdown())
    print(f"{result.jobs_total} jobs: {result.jobs_started} run now, {result.jobs_skipped} already done, "
          f"{result.jobs_failed} failed; results in {result.sweep_dir}")
    return 1 if result.jobs_failed else 0


if __name__ == "__main__":
    sys.exit(main())
