"""Helpers of the data tests: task folders written in each layout, and the message of an error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ipt_dist.data import DataError

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SHARED_TASKS = SHARED_DATA / "tasks"
needs_shared = pytest.mark.skipif(not SHARED_TASKS.is_dir(), reason=f"{SHARED_TASKS} not present")


def write_jsonl_task(root: Path, name: str, rows: dict[str, list] | None = None) -> Path:
    """A JSONL task; rows per split are dicts (JSON-encoded) or raw str/bytes lines."""
    default = {
        "train": [{"input": "a b", "output": "x"}, {"input": "c d", "output": "y"}],
        "dev": [{"input": "e f", "output": "x"}],
        "test": [{"input": "g h", "output": "y"}],
    }
    rows = {**default, **(rows or {})}
    task_dir = root / name
    task_dir.mkdir(parents=True, exist_ok=True)
    for split, lines in rows.items():
        data = b""
        for line in lines:
            if isinstance(line, dict):
                line = json.dumps(line)
            data += (line if isinstance(line, bytes) else line.encode()) + b"\n"
        (task_dir / f"{split}.jsonl").write_bytes(data)
    return task_dir


def write_tsv_task(
    root: Path, name: str, k: int = 16, seed: int = 13, rows: dict[str, str] | None = None
) -> Path:
    default = {
        "train": "in one\tout1\nin two\tout2\n",
        "dev": "in three\tout1\n",
        "test": "in four\tout2\talt\n",
    }
    rows = {**default, **(rows or {})}
    task_dir = root / name
    task_dir.mkdir(parents=True, exist_ok=True)
    for split, text in rows.items():
        (task_dir / f"{name}_{k}_{seed}_{split}.tsv").write_text(text, encoding="utf-8")
    return task_dir


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as e:
        fn(*args, **kwargs)
    return str(e.value)
