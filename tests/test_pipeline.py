"""The pipeline's reuse of a trained MSF: only when its inputs are unchanged (no Ray needed)."""

from __future__ import annotations

import pytest
import torch

from ipt_dist.artifacts import prompt_path, save_prompt
from ipt_dist.config import ConfigError, load_config
from ipt_dist.pipeline import _mark_msf, _msf_config, check_msf_reuse

TASKS = ["demo_sentiment", "demo_topic"]


def config(out, *extra):
    return load_config(None, [f"output_dir={out}", f"data.tasks=[{', '.join(TASKS)}]",
                              "data.unseen_tasks=[demo_parity]", "pt.prompt_len=4", *extra])


def test_trained_msf_is_reused_only_for_the_same_inputs(tmp_path):
    for i, t in enumerate(TASKS):
        save_prompt(prompt_path(tmp_path / "prompts", t), torch.full((4, 8), float(i)), backbone="x")
    cfg_d = _msf_config(config(tmp_path), 4)
    assert cfg_d.data.data_dir == str(tmp_path / "demo_data")  # one copy of the demo tasks, shared
    assert check_msf_reuse(cfg_d, 4) is False  # nothing trained yet
    (tmp_path / "msf_d4" / "msf").mkdir(parents=True)
    (tmp_path / "msf_d4" / "msf" / "summary.json").write_text("{}")
    _mark_msf(cfg_d)
    (tmp_path / "msf_d4" / "msf" / "msf.json").write_text('{"d": 4}')  # trained before provenance existed
    with pytest.raises(ConfigError, match="records no provenance .*Fix: delete"):
        check_msf_reuse(cfg_d, 4)
    (tmp_path / "msf_d4" / "msf" / "msf.json").write_text('{"d": 4, "provenance": {"version": 1}}')
    assert check_msf_reuse(cfg_d, 4) is True
    assert check_msf_reuse(_msf_config(config(tmp_path, "ist.steps=7", "sweep.lrs=[0.5]", "tracking.enabled=false"), 4), 4)

    with pytest.raises(ConfigError) as err:
        check_msf_reuse(_msf_config(config(tmp_path, "msf.steps=7"), 4), 4)
    assert "msf.steps: 10000 -> 7" in str(err.value) and "Fix: use another --out" in str(err.value)
    save_prompt(prompt_path(tmp_path / "prompts", "demo_topic"), torch.zeros(4, 8), backbone="x")
    with pytest.raises(ConfigError, match="prompt:demo_topic"):
        check_msf_reuse(cfg_d, 4)


def test_quickstart_with_data_holds_out_unseen_tasks(tmp_path, demo_dir):
    from ipt_dist.data.tasks import list_tasks
    from ipt_dist.pipeline import quickstart_config

    tasks = list_tasks(demo_dir)
    cfg = quickstart_config(tmp_path / "o", data=str(demo_dir))
    unseen = cfg.data.unseen_tasks
    assert len(unseen) == max(1, round(len(tasks) / 6)) and set(unseen) <= set(tasks)
    assert quickstart_config(tmp_path / "o", data=str(demo_dir)).data.unseen_tasks == unseen  # seeded
    assert {"msf_unseen", "ist_unseen"} <= set(cfg.sweep.settings)
    given = quickstart_config(tmp_path / "o", data=str(demo_dir), overrides=[f"data.unseen_tasks=[{tasks[0]}]"])
    assert given.data.unseen_tasks == [tasks[0]]


def test_a_stopped_distributed_msf_is_continued_only_from_a_committed_checkpoint(tmp_path):
    """`resumable_run` on the layout Ray Train 2.60 writes (the distributed test reads a real one):
    run.json without summary.json, and a snapshot whose latest committed checkpoint has a step."""
    import json

    from ipt_dist.distributed.msf_inputs import latest_committed_step, resumable_run

    cfg = config(tmp_path)
    dist, run = tmp_path / "msf_dist", tmp_path / "ray_results" / "msf-x"
    assert not resumable_run(cfg)  # nothing ran
    dist.mkdir()
    record = {"ray_run": "msf-x", "storage_path": str(tmp_path / "ray_results"), "inputs": {"msf.d": 4}}
    (dist / "run.json").write_text(json.dumps(record))
    assert not resumable_run(cfg)  # stopped before Ray Train wrote anything: a new run starts
    run.mkdir(parents=True)
    snapshot = {"checkpoint_results": [], "latest_checkpoint_result": None, "current_report_index": 1}
    (run / "checkpoint_manager_snapshot.json").write_text(json.dumps(snapshot))
    assert latest_committed_step(run) == 0 and not resumable_run(cfg)  # reported, nothing committed yet
    snapshot["latest_checkpoint_result"] = {"version": 0, "checkpoint_dir_name": "checkpoint_step00001000",
                                            "metrics": {"step": 1000}}
    (run / "checkpoint_manager_snapshot.json").write_text(json.dumps(snapshot))
    assert latest_committed_step(run) == 1000 and resumable_run(cfg)
    (dist / "run.json").write_text(json.dumps({**record, "inputs": None}))
    assert not resumable_run(cfg)  # an older run.json: its inputs cannot be checked, so it is not continued
    (dist / "run.json").write_text(json.dumps(record))
    (dist / "summary.json").write_text("{}")
    assert not resumable_run(cfg)  # finished: check_msf_reuse decides, nothing is trained again
