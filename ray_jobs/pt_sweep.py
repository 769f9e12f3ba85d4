"""Stage-0 PT sweep (the P_i prompt files and the PT baseline scores) fanned out as Ray tasks.

    python ray_jobs/pt_sweep.py --smoke-test --out /tmp/ipt_smoke
    python ray_jobs/pt_sweep.py --config configs/ist_sweep.yaml --out /abs/path/runs/ist
    RAY_AUTH_MODE=token ray job submit --working-dir . -- \
        python ray_jobs/pt_sweep.py --config configs/ist_sweep.yaml --out /abs/path/runs/ist \
        --set "sweep.lrs=[1e-5,2e-5,5e-5,1e-4]"

The sweep trains every task (seen and unseen) x sweep.data_seeds x sweep.lrs; afterwards the best-dev
prompt of the first data seed becomes <msf.prompts_dir or out/prompts>/<task>.safetensors, the P_i that
MSF reads. PT and IST learning rates live on different scales: give the PT grid with --set sweep.lrs=[...]
or a PT-specific config. Re-submitting with the same --out skips finished jobs; see docs/sweeps.md.
"""

import sys
from pathlib import Path

# a checkout works without `pip install`, also under `ray job submit`
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ipt_dist.distributed import sweep_cli


def main(argv: list[str] | None = None) -> int:
    return sweep_cli.main("pt", __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
