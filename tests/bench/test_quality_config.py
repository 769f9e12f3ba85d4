"""The quality benchmark's shipped inputs: the task split and both configs (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ipt_dist.config import IPTConfig, load_config
from tests.bench import bench_module

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
TASKS = SHARED / "tasks"
SPLIT = REPO / "bench" / "quality_split.json"
CONFIGS = [REPO / "configs" / "quality_cpu.yaml", REPO / "configs" / "quality_gpu.yaml"]

needs_shared = pytest.mark.skipif(not TASKS.is_dir(), reason=f"{SHARED} is absent")


def test_split_file_is_in_the_papers_form():
    split = json.loads(SPLIT.read_text())
    assert len(split["train"]) >= 24 and len(split["test"]) >= 8  # issue 14: T well above d = 5
    assert set(split) == {"train", "dev", "test"}
    assert split["train"] and split["test"] and split["dev"] == []
    assert not set(split["train"]) & set(split["test"]), "train and unseen tasks must be disjoint"
    assert len(set(split["train"])) == len(split["train"]) and len(set(split["test"])) == len(split["test"])


@pytest.mark.shared_data
@needs_shared
def test_split_tasks_exist_in_the_shared_data():
    from ipt_dist.data.tasks import list_tasks, load_split

    split = load_split(SPLIT, list_tasks(TASKS))  # raises DataError on unknown or overlapping tasks
    names = {r["name"] for r in json.loads((TASKS / "tasks.json").read_text())}
    for t in split["train"] + split["test"]:
        assert t in names, t
        assert (TASKS / t / "train.jsonl").is_file() and (TASKS / t / "test.jsonl").is_file(), t


@pytest.mark.shared_data
@needs_shared
def test_split_is_the_documented_seeded_draw():
    q = bench_module("quality")
    gpu_split, make_split = q.gpu_split, q.make_split
    assert make_split(TASKS) == json.loads(SPLIT.read_text())
    gpu = gpu_split(TASKS)
    cfg = load_config(CONFIGS[1])
    assert sorted(cfg.data.tasks) == gpu["train"] and sorted(cfg.data.unseen_tasks) == gpu["test"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_quality_configs_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, IPTConfig)
    assert cfg.backbone.name_or_path == "smollm2-135m"
    assert {5, 50, 250} <= set(cfg.sweep.dims)
    assert cfg.sweep.random_decoder and cfg.sweep.pca_decoder  # both baselines beside MSF (issue 14)
    assert cfg.msf.lm_reduction == "sum" and cfg.msf.alpha == 200.0  # the reference loss balance
    assert len(cfg.sweep.data_seeds) >= 2 and len(cfg.sweep.settings) == 5
    assert cfg.tracking.enabled
    if cfg.data.data_seed is not None:
        assert cfg.sweep.data_seeds[0] == cfg.data.data_seed


def test_cpu_config_uses_the_split_file():
    cfg = load_config(CONFIGS[0])
    assert cfg.data.split_file and (REPO / cfg.data.split_file).resolve() == SPLIT.resolve()
    gpu = load_config(CONFIGS[1])
    assert not set(gpu.data.tasks) & set(gpu.data.unseen_tasks)
    assert gpu.pt.prompt_len == 100 and gpu.backbone.num_beams == 4


@pytest.mark.shared_data
@needs_shared
def test_cpu_config_plans_against_the_shared_data(tmp_path):
    """The CPU config with the split resolves its tasks and the PT sweep plan (no Ray, no model)."""
    from ipt_dist.sweep.plan import plan_sweep

    cfg = load_config(CONFIGS[0], [f"output_dir={tmp_path}", f"data.data_dir={TASKS}",
                                   f"data.split_file={SPLIT}"])
    plan = plan_sweep(cfg, "pt")
    split = json.loads(SPLIT.read_text())
    assert plan.train_tasks == split["train"] and plan.unseen_tasks == split["test"]
    assert len(plan.jobs) == len(split["train"] + split["test"]) * len(cfg.sweep.data_seeds) * len(cfg.sweep.lrs)


@pytest.mark.shared_data
@needs_shared
def test_new_draws_share_part_of_the_first(tmp_path):
    """The shared pools hold 64 examples per task, so setting 4's second draw overlaps the first; the
    report measures how much (bench/quality.py draw_overlap) rather than calling it new data."""
    cfg = load_config(CONFIGS[0], [f"output_dir={tmp_path}", f"data.data_dir={TASKS}", f"data.split_file={SPLIT}"])
    got = bench_module("quality").draw_overlap(cfg, ["gym__emo", "gym__kilt_nq"])
    assert set(got) == {"gym__emo", "gym__kilt_nq"}
    assert all(0.0 < v < 1.0 for v in got.values()), got  # distinct draws, but not disjoint
