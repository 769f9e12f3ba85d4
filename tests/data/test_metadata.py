"""tasks.json (metric per task) and the paper's task split files.

Run: PYTHONPATH=. python -m pytest tests/data -q -p no:cacheprovider
"""

from __future__ import annotations

import json

import pytest

from ipt_dist.data import (
    METRICS,
    TaskInfo,
    list_tasks,
    load_split,
    load_task_info,
)
from tests.data.files import SHARED_TASKS, error_of, needs_shared


def test_load_task_info_list_and_dict(tmp_path):
    f = tmp_path / "tasks.json"
    f.write_text(json.dumps([
        {"name": "a", "metric": "Rouge-L", "category": "generation", "task_type": "generation",
         "is_classification": False, "label_space": None, "n_train": 3},
        {"name": "b", "task_type": "classification"},
    ]))
    infos = load_task_info(f)
    assert infos["a"] == TaskInfo("a", "Rouge-L", False, "generation", "generation")
    assert infos["b"] == TaskInfo("b", "ACC", True, "", "classification")  # is_classification from type
    f.write_text(json.dumps({"c": {"metric": "EM"}}))
    assert load_task_info(f) == {"c": TaskInfo("c", "EM")}


def test_load_task_info_errors_are_collected(tmp_path):
    f = tmp_path / "tasks.json"
    f.write_text(json.dumps([
        {"name": "a", "metric": "Rouge"},
        {"name": "a"},
        {"metric": "EM"},
        {"name": "b", "task_type": "regression"},
        {"name": "c", "is_classification": "yes"},
        "oops",
    ]))
    msg = error_of(load_task_info, f)
    assert f"{f} task 'a': unknown metric 'Rouge' (closest: Rouge-L)" in msg
    assert ", ".join(METRICS) in msg
    assert "task 'a': appears more than once" in msg
    assert 'record 2: missing or empty "name"' in msg
    assert "unknown task_type 'regression'" in msg and "must be true or false" in msg
    assert "record 5: expected an object, found str" in msg
    f.write_text("[{,}]")
    assert f"{f} line 1: invalid JSON" in error_of(load_task_info, f)
    assert "tasks file not found" in error_of(load_task_info, tmp_path / "missing.json")
    f.write_text('"just a string"')
    assert "expected a list of task records" in error_of(load_task_info, f)


def test_load_split(tmp_path):
    f = tmp_path / "split.json"
    f.write_text(json.dumps({"train": ["a", "b"], "test": ["c"]}))
    assert load_split(f) == {"train": ["a", "b"], "dev": [], "test": ["c"]}
    assert load_split(f, available=["a", "b", "c"])["test"] == ["c"]


def test_load_split_errors(tmp_path):
    f = tmp_path / "split.json"
    f.write_text(
        json.dumps({"train": ["a", "a", "glue-sst2"], "tets": [], "dev": "b", "test": ["glue-sst2", 3]})
    )
    msg = error_of(load_split, f)
    assert "unknown key 'tets' (closest: test)" in msg
    assert "'dev': must be a list" in msg and "'test': must be a list" in msg
    assert "tasks listed more than once: a" in msg
    f.write_text(json.dumps({"train": ["a", "glue-sst2"], "test": ["glue-sst2"]}))
    assert "tasks in both 'train' and 'test': glue-sst2" in error_of(load_split, f)
    f.write_text(json.dumps({"train": ["glue-sst", "a"], "test": ["zzz"]}))
    msg = error_of(load_split, f, available=["glue-sst2", "a"])
    assert f"{f} 'train': unknown task 'glue-sst' (closest: glue-sst2)" in msg
    assert "unknown task 'zzz'" in msg
    f.write_text("{}")
    assert "lists no tasks" in error_of(load_split, f)
    f.write_text("[1]")
    assert "expected an object" in error_of(load_split, f)
    f.write_text('{"train": [')
    assert "invalid JSON" in error_of(load_split, f)
    assert "split file not found" in error_of(load_split, tmp_path / "nope.json")


@pytest.mark.shared_data
@needs_shared
def test_shared_tasks_json_metrics_valid():
    infos = load_task_info(SHARED_TASKS / "tasks.json")
    assert len(infos) > 100 and {i.metric for i in infos.values()} <= set(METRICS)
    raw = json.loads((SHARED_TASKS / "tasks.json").read_text())
    assert all(r["metric"] in METRICS for r in raw)
    assert set(infos) == set(list_tasks(SHARED_TASKS))


def test_json_files_accept_a_bom_and_say_when_they_are_empty(tmp_path):
    f = tmp_path / "split.json"
    f.write_bytes(b"\xef\xbb\xbf" + json.dumps({"train": ["a"], "test": ["b"]}).encode())
    assert load_split(f)["train"] == ["a"]
    t = tmp_path / "tasks.json"
    t.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"name": "a", "metric": "EM"}]).encode())
    assert load_task_info(t)["a"].metric == "EM"
    for path in (f, t):
        path.write_text("  \n")
        assert "the file is empty" in error_of(load_split if path is f else load_task_info, path)
