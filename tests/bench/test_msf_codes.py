"""bench/msf_codes.py: the norms behind the IST-start finding (BENCHMARKS.md, IST calibration at
d = 250), from a run directory's prompts and MSF checkpoints; a missing checkpoint is one error line."""

import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def _run(args):
    return subprocess.run([sys.executable, str(ROOT / "bench" / "msf_codes.py"), *args], capture_output=True,
                          text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                          timeout=300, check=False)


def test_msf_codes_prints_the_norms_of_a_run(stage0, tmp_path):
    from ipt_dist.artifacts import load_msf_checkpoint

    (tmp_path / "msf_d4").mkdir()
    (tmp_path / "msf_d4" / "msf").symlink_to(stage0["ckpt"])
    (tmp_path / "prompts").symlink_to(stage0["prompts"])
    res = _run(["--run", str(tmp_path), "--dims", "4"])
    assert res.returncode == 0, res.stderr
    row = [line for line in res.stdout.splitlines() if line.startswith("| 4 |")]
    assert len(row) == 1
    ae, _ = load_msf_checkpoint(stage0["ckpt"])
    with torch.no_grad():
        dec0 = ae.decoder(torch.zeros(1, 4)).norm().item()
    assert row[0].split("|")[4].strip() == f"{dec0:.1f}"


def test_a_missing_checkpoint_is_one_error_line(tmp_path):
    res = _run(["--run", str(tmp_path), "--dims", "5"])
    assert res.returncode == 2 and res.stderr.startswith("error: no MSF checkpoint for d=[5]")
    assert len(res.stderr.strip().splitlines()) == 1
