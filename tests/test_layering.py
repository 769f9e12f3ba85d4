"""Core modules import no ray, mlflow or deepspeed (they must run on a GPU box without them)."""

import subprocess
import sys
from pathlib import Path

CORE = [
    "ipt_dist.config", "ipt_dist.metrics", "ipt_dist.artifacts", "ipt_dist.tracking", "ipt_dist.summary",
    "ipt_dist.report", "ipt_dist.peft_io", "ipt_dist.provenance",
    "ipt_dist.data", "ipt_dist.data.tasks", "ipt_dist.data.batching", "ipt_dist.data.sampling",
    "ipt_dist.modeling.backbone", "ipt_dist.modeling.autoencoder", "ipt_dist.modeling.tiny",
    "ipt_dist.train.steps", "ipt_dist.train.optim", "ipt_dist.train.packed",
    "ipt_dist.stages.common", "ipt_dist.stages.pt", "ipt_dist.stages.msf", "ipt_dist.stages.ist", "ipt_dist.cli",
]

BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("ray", "mlflow", "deepspeed"):
            raise ImportError("blocked import of " + name)
sys.meta_path.insert(0, Block())
import importlib
for m in sys.argv[1:]:
    importlib.import_module(m)
print("ok")
"""


def test_core_imports_without_orchestration_packages():
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", BLOCKER, *CORE], capture_output=True, text=True, cwd=root)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_the_blocker_itself_works():
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", BLOCKER, "ray"], capture_output=True, text=True, cwd=root)
    assert r.returncode != 0 and "blocked import of ray" in r.stderr
