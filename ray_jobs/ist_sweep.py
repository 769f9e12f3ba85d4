"""IST sweep (stage 2, settings 1-5, baselines) fanned out as Ray tasks, tracked in MLflow.

    python ray_jobs/ist_sweep.py --smoke-test --out /tmp/ipt_smoke
    python ray_jobs/ist_sweep.py --config configs/ist_sweep.yaml --out /abs/path/runs/ist
    RAY_AUTH_MODE=token ray job submit --working-dir . -- \
        python ray_jobs/ist_sweep.py --config configs/ist_sweep.yaml --out /abs/path/runs/ist

Re-submitting with the same --out (and tracking URI) skips finished jobs; see docs/sweeps.md.
"""

import sys
from pathlib import Path

# a checkout works without `pip install`, also under `ray job submit`
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ipt_dist.distributed import sweep_cli


def main(argv: list[str] | None = None) -> int:
    return sweep_cli.main("ist", __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    sys.exit(main())
