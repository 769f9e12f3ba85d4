"""Stage 1 (MSF) on a Ray cluster: Ray Train workers, DeepSpeed engine over the prompt autoencoder.

    python ray_jobs/msf.py --config configs/msf.yaml --out /abs/runs/msf
    python ray_jobs/msf.py --smoke-test --out /tmp/msf_smoke
    python ray_jobs/msf.py --config configs/msf.yaml --out /abs/runs/msf --resume
    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python ray_jobs/msf.py --smoke-test --out /tmp/msf_smoke

Without a running cluster Ray starts locally on demand. A submitted job runs in a temporary
copy of the working dir: give absolute --out paths and tracking URIs (see docs/distributed_msf.md).
Thin on purpose: parse, load the config, call `ipt_dist.distributed.msf_driver.run_distributed_msf`
(with --smoke-test, first the stage-0 driver `run_pt` for the prompts it needs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOKE_CONFIG = ROOT / "configs" / "msf_smoke.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Distributed MSF (Ray Train + DeepSpeed)")
    parser.add_argument("--config", help="YAML config (default with --smoke-test: configs/msf_smoke.yaml)")
    parser.add_argument("--out", help="output directory (overrides output_dir); absolute for ray job submit")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set msf.d=100 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue the stopped run recorded in --out")
    parser.add_argument("--smoke-test", action="store_true",
                        help="tiny CPU run end to end: trains its stage-0 prompts, then 2-worker MSF")
    parser.add_argument("--debug", action="store_true", help="show tracebacks (also: IPT_DEBUG=1)")
    parser.add_argument("--verbose", action="store_true",
                        help="all library and Ray worker output on the console (also: IPT_VERBOSE=1)")
    args = parser.parse_args(argv)
    if args.config is None and not args.smoke_test:
        parser.error("--config is required (or pass --smoke-test)")

    if str(ROOT) not in sys.path:  # run as a script without the package installed
        sys.path.insert(0, str(ROOT))
    from ipt_dist.errors import debug_requested, run_entry

    return run_entry(lambda: _run(args), debug=args.debug or debug_requested(),
                     interrupted="MSF interrupted: its checkpoints are kept; run the same command with --resume "
                                 "to continue")


def _run(args: argparse.Namespace) -> int:
    from ipt_dist import console
    from ipt_dist.config import load_config
    from ipt_dist.distributed.msf_driver import DistributedMSFError, run_distributed_msf
    from ipt_dist.errors import one_line
    from ipt_dist.stages.common import setup_logging

    setup_logging(verbose=args.verbose)
    overrides = list(args.set) + ([f"output_dir={args.out}"] if args.out else [])
    cfg = load_config(args.config or SMOKE_CONFIG, overrides)
    console.log_to(cfg.output_dir)  # library messages and warnings: <out>/logs/ipt.log
    try:
        if args.smoke_test:
            _train_smoke_prompts(cfg)
        summary = run_distributed_msf(cfg, resume=args.resume)
    except DistributedMSFError as exc:  # the run started and failed: not a user error (exit 1)
        if args.debug:
            raise
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _train_smoke_prompts(cfg) -> None:
    """--smoke-test: train the stage-0 prompts the run needs (`run_pt`, fast on tiny configs), with
    the paths the run will use (`absolutize`).

    Raises:
        MSFInputError: msf.prompts_dir is set elsewhere than where stage 0 writes.
    """
    import logging

    from ipt_dist.data.selection import resolve_tasks
    from ipt_dist.distributed.msf_inputs import MSFInputError, absolutize
    from ipt_dist.paths import pt_prompts_dir
    from ipt_dist.stages.pt import run_pt

    cfg = absolutize(cfg.validate())
    default = pt_prompts_dir(cfg)
    if Path(cfg.msf.prompts_dir) != default:
        raise MSFInputError(f"smoke test: stage 0 writes its prompts to {default}"
                            f" but msf.prompts_dir is {cfg.msf.prompts_dir}. "
                            "Fix: leave msf.prompts_dir unset")
    logging.getLogger(__name__).info("smoke test: training the stage-0 prompts first")
    run_pt(cfg, tasks=resolve_tasks(cfg).train)


if __name__ == "__main__":
    sys.exit(main())
