"""Command line of the sweep entry points (`ray_jobs/pt_sweep.py`, `ray_jobs/ist_sweep.py`)."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args(stage: str, description: str, argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", help="YAML config (default with --smoke-test: configs/sweep_smoke.yaml)")
    p.add_argument("--out", help="output directory (overrides output_dir); absolute under `ray job submit`")
    p.add_argument("--smoke-test", action="store_true",
                   help="tiny CPU sweep; trains the stage-0 prompts and MSF it needs first" if stage == "ist"
                   else "tiny CPU sweep of the stage-0 prompts")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or "
                                          "sqlite:///<out>/mlflow.db)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set sweep.pack_size=8 (repeatable)")
    p.add_argument("--debug", action="store_true", help="show tracebacks (also: IPT_DEBUG=1)")
    p.add_argument("--verbose", action="store_true",
                   help="all library and Ray worker output on the console (also: IPT_VERBOSE=1)")
    args = p.parse_args(argv)
    if args.config is None and not args.smoke_test:
        p.error("--config is required unless --smoke-test is given")
    return args


def main(stage: str, description: str, argv: list[str] | None = None) -> int:
    """Parse, load the config, run the sweep; exit status 0 done, 1 some jobs failed, 2 a user error
    (one `error:` line), 130 interrupted."""
    from ipt_dist.errors import debug_requested, run_entry

    args = parse_args(stage, description, argv)
    return run_entry(lambda: _run(stage, args), debug=args.debug or debug_requested(),
                     interrupted="sweep interrupted: finished jobs are kept in results.jsonl; re-submit the same "
                                 "command to resume it")


def _run(stage: str, args: argparse.Namespace) -> int:
    from ipt_dist import console
    from ipt_dist.config import load_config
    from ipt_dist.distributed.fanout import run_sweep

    console.setup(verbose=args.verbose)
    overrides = list(args.set)
    if args.out:
        overrides.append(f"output_dir={args.out}")
    if args.tracking_uri:
        overrides.append(f"tracking.tracking_uri={args.tracking_uri}")
    cfg = load_config(args.config or ROOT / "configs" / "sweep_smoke.yaml", overrides)
    console.log_to(cfg.output_dir)  # library messages and warnings: <out>/logs/ipt.log
    # `ray job stop` sends SIGTERM: turn it into KeyboardInterrupt so the driver cancels its Ray
    # tasks and closes the MLflow parent run as KILLED (a re-submission resumes the sweep).
    signal.signal(signal.SIGTERM, _interrupt)
    result = run_sweep(cfg, stage=stage, smoke_test=args.smoke_test)
    print(result.summary.to_markdown())
    print(f"{result.jobs_total} jobs: {result.jobs_started} run now, {result.jobs_skipped} already done, "
          f"{result.jobs_failed} failed; results in {result.sweep_dir}")
    return 1 if result.jobs_failed else 0
