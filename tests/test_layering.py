"""Imports run one way: components <- drivers (stages/) <- orchestration (sweep/, distributed/) <- entry
points; only ipt_dist/distributed/ imports ray or deepspeed (the core must run on a GPU box without them)."""

import subprocess
import sys
from pathlib import Path

CORE = [
    "ipt_dist.config", "ipt_dist.metrics", "ipt_dist.artifacts", "ipt_dist.tracking", "ipt_dist.summary",
    "ipt_dist.report", "ipt_dist.peft_io", "ipt_dist.provenance",
    "ipt_dist.paths", "ipt_dist.data", "ipt_dist.data.tasks", "ipt_dist.data.records", "ipt_dist.data.local",
    "ipt_dist.data.metadata", "ipt_dist.data.hf", "ipt_dist.data.demo", "ipt_dist.data.selection",
    "ipt_dist.data.batching", "ipt_dist.data.sampling",
    "ipt_dist.modeling.backbone", "ipt_dist.modeling.autoencoder", "ipt_dist.modeling.tiny",
    "ipt_dist.train.steps", "ipt_dist.train.optim", "ipt_dist.train.packed",
    "ipt_dist.stages.common", "ipt_dist.stages.pt", "ipt_dist.stages.msf", "ipt_dist.stages.ist", "ipt_dist.cli",
    "ipt_dist.testing.faults", "ipt_dist.sweep.jobs", "ipt_dist.sweep.plan", "ipt_dist.sweep.grid",
    "ipt_dist.sweep.packing", "ipt_dist.sweep.inputs", "ipt_dist.sweep.worker", "ipt_dist.sweep.results",
    "ipt_dist.sweep.progress", "ipt_dist.sweep.smoke",
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
    r = subprocess.run([sys.executable, "-c", BLOCKER, *CORE], capture_output=True, text=True, cwd=root,
                       check=False)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_the_blocker_itself_works():
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", BLOCKER, "ray"], capture_output=True, text=True, cwd=root,
                       check=False)
    assert r.returncode != 0 and "blocked import of ray" in r.stderr


# Every import, module-level and inside functions (the blocker above only sees what importing runs).
COMPONENT_FILES = ["config.py", "paths.py", "metrics.py", "artifacts.py", "tracking.py", "summary.py", "report.py",
                   "peft_io.py", "provenance.py", "rerun.py", "errors.py", "data", "modeling", "train", "testing"]


def _imports(path: Path) -> list[tuple[int, str]]:
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
    return found


def test_every_import_of_components_and_drivers_points_down():
    pkg = Path(__file__).resolve().parents[1] / "ipt_dist"
    above = ("ipt_dist.stages", "ipt_dist.distributed", "ipt_dist.pipeline", "ipt_dist.cli", "ipt_dist.sweep")
    bad = []
    for name in COMPONENT_FILES:
        for f in sorted([pkg / name] if name.endswith(".py") else (pkg / name).rglob("*.py")):
            for line, mod in _imports(f):
                if mod.startswith(above) or mod.split(".")[0] in ("ray", "deepspeed") or (
                        mod.split(".")[0] == "mlflow" and f.name not in ("tracking.py", "report.py")):
                    bad.append(f"{f.relative_to(pkg)}:{line} imports {mod}")
    for f in sorted((pkg / "stages").glob("*.py")):  # drivers: components and stages.common only
        for line, mod in _imports(f):
            other_stage = mod.startswith("ipt_dist.stages.") and mod not in ("ipt_dist.stages.common",
                                                                             f"ipt_dist.stages.{f.stem}")
            if other_stage or mod.startswith(above[1:]) or mod.split(".")[0] in ("ray", "deepspeed"):
                bad.append(f"{f.relative_to(pkg)}:{line} imports {mod}")
    assert not bad, "imports that climb a layer:\n" + "\n".join(bad)


# Imports of drivers (stages/) by orchestration that are still allowed: (file under ipt_dist/, module,
# name). Empty since the data/paths, MSF/train and sweep splits landed; a new one fails the test below.
KNOWN_DRIVER_IMPORTS: set[tuple[str, str, str]] = set()


def _imported_names(path: Path) -> list[tuple[int, str, str]]:
    """(line, module, name) of every import in `path`: `import a.b` gives (line, "a.b", "a.b")."""
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found += [(node.lineno, node.module, a.name) for a in node.names]
    return found


def _top(mod: str) -> str:
    return mod.split(".")[0]


def test_only_distributed_imports_ray_or_deepspeed():
    pkg = Path(__file__).resolve().parents[1] / "ipt_dist"
    bad = [f"{f.relative_to(pkg)}:{line} imports {mod}"
           for f in sorted(pkg.rglob("*.py")) if f.relative_to(pkg).parts[0] != "distributed"
           for line, mod in _imports(f) if _top(mod) in ("ray", "deepspeed")]
    assert not bad, "ray / deepspeed outside ipt_dist/distributed/:\n" + "\n".join(bad)


def test_orchestration_imports_no_driver_and_the_sweep_no_ray():
    """ipt_dist/sweep/ (pure Python) imports no ray, deepspeed, distributed/ or driver; its smoke.py is
    the smoke path, which may run drivers. distributed/ imports no driver (stages/)."""
    pkg = Path(__file__).resolve().parents[1] / "ipt_dist"
    bad, seen = [], set()
    for f in sorted((pkg / "sweep").glob("*.py")) + sorted((pkg / "distributed").glob("*.py")):
        rel = str(f.relative_to(pkg))
        for line, mod, name in _imported_names(f):
            if mod.startswith("ipt_dist.stages"):
                if rel == "sweep/smoke.py":
                    continue
                if (rel, mod, name) in KNOWN_DRIVER_IMPORTS:
                    seen.add((rel, mod, name))
                    continue
                bad.append(f"{rel}:{line} imports {name} from the driver {mod}")
            elif rel.startswith("sweep/") and (_top(mod) in ("ray", "deepspeed") or
                                               mod.startswith(("ipt_dist.distributed", "ipt_dist.pipeline",
                                                               "ipt_dist.cli"))):
                bad.append(f"{rel}:{line} imports {mod} (ipt_dist/sweep/ is plain Python, below distributed/)")
    gone = sorted(KNOWN_DRIVER_IMPORTS - seen)
    assert not bad, "orchestration imports that climb a layer:\n" + "\n".join(bad)
    assert not gone, "no longer imported: remove from KNOWN_DRIVER_IMPORTS:\n" + "\n".join(map(str, gone))


def test_the_import_rules_catch_a_violation(tmp_path):
    """The scanner sees imports inside functions (where most of the sweep's used to be)."""
    f = tmp_path / "x.py"
    f.write_text("def run():\n    from ipt_dist.stages.msf import run_msf\n    import ray.train\n")
    assert _imported_names(f) == [(2, "ipt_dist.stages.msf", "run_msf"), (3, "ray.train", "ray.train")]
