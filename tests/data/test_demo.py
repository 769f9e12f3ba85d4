"""The synthetic demo tasks: round trip, determinism, sizes.

Run: PYTHONPATH=. python -m pytest tests/data -q -p no:cacheprovider
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ipt_dist.data import (
    list_tasks,
    load_task,
    load_tasks,
    write_demo_tasks,
)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_demo_tasks_roundtrip_and_determinism(tmp_path):
    names = write_demo_tasks(tmp_path / "a")
    assert names == write_demo_tasks(tmp_path / "b")
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
    write_demo_tasks(tmp_path / "c", seed=1)
    assert _tree(tmp_path / "a") != _tree(tmp_path / "c")  # the seed matters

    assert 8 <= len(names) <= 14 and list_tasks(tmp_path / "a") == sorted(names)
    tasks = load_tasks(tmp_path / "a", names)  # reads the written tasks.json
    infos = [t.info for t in tasks.values()]
    assert {i.metric for i in infos} >= {"ACC", "Classification-F1", "EM"}
    assert {i.metric for i in infos} & {"QA-F1", "Rouge-L"}
    assert {i.task_type for i in infos} >= {"classification", "generation"}
    assert len({i.category for i in infos}) >= 3
    assert any(ex.options for t in tasks.values() for ex in t.train)
    assert any(len(ex.outputs) > 1 for t in tasks.values() for ex in t.train)  # references used

    vocab = set()
    for t in tasks.values():
        assert (len(t.train), len(t.dev), len(t.test)) == (32, 16, 32)
        inputs = [e.input for s in ("train", "dev", "test") for e in t.split(s)]
        assert len(set(inputs)) == len(inputs), f"{t.name}: splits must be disjoint by input"
        for e in t.train + t.dev + t.test:
            assert 3 <= len(e.input.split()) <= 10, e.input
            assert 1 <= len(e.target.split()) <= 2, e.target
            vocab.update(w for w in e.input.split() + e.target.split() if not w.isdigit())
        if t.info.is_classification:
            labels = [e.target for e in t.train + t.dev + t.test]
            # balanced labels: every label at least 15% of the examples
            assert min(labels.count(lab) for lab in set(labels)) >= 0.15 * len(labels), t.name
    assert len(vocab) <= 160

    records = json.loads((tmp_path / "a" / "tasks.json").read_text())
    for r in records:
        required = {"name", "category", "task_type", "is_classification", "metric"}
        assert required | {"n_train", "n_dev", "n_test"} <= set(r)


def test_demo_tasks_sizes(tmp_path):
    names = write_demo_tasks(tmp_path, n_train=5, n_dev=3, n_test=4, seed=3)
    td = load_task(tmp_path, names[0])
    assert (len(td.train), len(td.dev), len(td.test)) == (5, 3, 4)
    with pytest.raises(ValueError, match="n_dev"):
        write_demo_tasks(tmp_path, n_dev=0)
    with pytest.raises(ValueError, match="distinct inputs"):
        write_demo_tasks(tmp_path, n_train=2_000)
