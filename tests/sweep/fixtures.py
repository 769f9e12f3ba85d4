"""The sweep tests' shared inputs: the stage-0 prompts, PT results of both draws and one MSF
checkpoint (trained once per session, single process: planning tests need no Ray), and the sweep
config built on them."""

from __future__ import annotations

from pathlib import Path

import pytest

from ipt_dist.config import load_config
from tests.conftest import tiny_overrides

SEEN = ["demo_sentiment", "demo_topic", "demo_parity"]
UNSEEN = ["demo_copy_first"]
LRS = [0.1, 0.3, 1.0]
# 3 msf_seen + 1 msf_unseen + 3x3 ist_seen_same + 3x1x3 ist_seen_new + 1x2x3 ist_unseen
N_JOBS = 3 + 1 + 9 + 9 + 6


def base_overrides(out: Path, demo_dir: Path) -> list[str]:
    return tiny_overrides(out, demo_dir) + [
        f"data.tasks=[{', '.join(SEEN)}]",
        f"data.unseen_tasks=[{', '.join(UNSEEN)}]",
        "data.max_examples=8",
        "data.train_size=6",  # each data seed draws its own 6 training examples
        "data.data_seed=42",
        "backbone.max_new_tokens=4",
        "pt.steps=10", "pt.eval_every=5",
        "ist.steps=10", "ist.eval_every=5",
        "msf.steps=6", "msf.eval_every=6",
        "sweep.data_seeds=[42, 13]",
        f"sweep.lrs=[{', '.join(map(str, LRS))}]",
        "sweep.pack_size=8",
        "sweep.max_in_flight=2",
        "sweep.max_retries=2",
        "sweep.num_cpus=1",
    ]


@pytest.fixture(scope="session")
def stage0(tmp_path_factory, demo_dir):
    """Stage-0 prompts of all tasks, PT results on both data seeds and one MSF checkpoint (d=4),
    single process (a PT sweep would need Ray, and the planning tests run without it)."""
    from ipt_dist.stages.common import resolve_tasks
    from ipt_dist.stages.msf import run_msf
    from ipt_dist.stages.pt import run_pt

    out = tmp_path_factory.mktemp("stage0")
    cfg = load_config(None, base_overrides(out, demo_dir))
    pt = run_pt(cfg, tasks=resolve_tasks(cfg).all)
    # The new-data draw: settings 4 and 5 divide by PT trained and tested on seed 13.
    pt += run_pt(load_config(None, base_overrides(out / "pt_s13", demo_dir) + ["data.data_seed=13"]),
                 tasks=resolve_tasks(cfg).all)
    pt = [{**r, "job_id": f"{r['job_id']}-s{r['data_seed']}"} for r in pt]  # `ipt pt` ids omit the draw
    assert {r["data_seed"] for r in pt} == {42, 13}
    run_msf(cfg)
    return {"out": out, "ckpt": out / "msf", "prompts": out / "prompts", "demo_dir": demo_dir, "pt": pt}


def write_pt_results(stage0, out: Path) -> None:
    """The stage-0 PT results of both draws where the IST sweep looks for them (<out>/pt/results.jsonl)."""
    from ipt_dist.artifacts import append_jsonl

    path = out / "pt" / "results.jsonl"
    if not path.is_file():
        for r in stage0["pt"]:
            append_jsonl(path, r)


def sweep_cfg(stage0, out: Path, *extra: str, tracking: bool = True, pt_results: bool = True):
    """The sweep config of these tests; `pt_results` also puts the PT denominators in `out`."""
    if pt_results:
        write_pt_results(stage0, out)
    over = base_overrides(out, stage0["demo_dir"]) + [
        f"msf.prompts_dir={stage0['prompts']}",
        f"sweep.dims={{4: {stage0['ckpt']}}}",
    ]
    if tracking:
        over += ["tracking.enabled=true", f"tracking.tracking_uri=sqlite:///{out}/mlflow.db",
                 "tracking.experiment=sweep-test"]
    return load_config(None, over + list(extra))
