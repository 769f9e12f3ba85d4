"""Task metadata and task splits: a ``tasks.json`` file (metric, category, type per task:
`load_task_info`) and the IPT paper's split of tasks into train/dev/test (`load_split`).

Both files are read UTF-8 with or without a BOM; every problem is listed in one `DataError`.
Plain Python.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ipt_dist.data.records import METRICS, SPLITS, TASK_TYPES, DataError, TaskInfo, _close, _raise_if, _short

__all__ = ["load_split", "load_task_info"]


def _read_json(path: Path, expected: str) -> Any:
    """A JSON file, UTF-8 with or without a BOM (as JSONL and TSV files are read)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 ({e.reason}). Fix: re-save the file as UTF-8") from e
    if not text.strip():
        raise DataError(f"{path}: the file is empty. Fix: write {expected} into it")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path} line {e.lineno}: invalid JSON ({e.msg}). Fix: correct the JSON syntax") from e


def load_task_info(tasks_file: str | Path) -> dict[str, TaskInfo]:
    """Read task metadata from a ``tasks.json`` file.

    The file is either a list of records (the ``shared/data`` schema: ``name``, ``metric``,
    ``category``, ``task_type``, ``is_classification``, ...) or a dict ``{name: record}``.
    Only ``name``, ``metric``, ``is_classification``, ``category`` and ``task_type`` are used; other
    fields are ignored. Missing ``metric`` defaults to ACC; missing ``is_classification`` follows
    ``task_type == "classification"``.

    Raises:
        DataError: the file is missing or not valid JSON, a record is malformed, a name repeats, or a
            metric/task_type is not allowed; every problem is listed in one error.
    """
    path = Path(tasks_file)
    if not path.is_file():
        raise DataError(f"{path}: tasks file not found. Fix: pass the path of an existing tasks.json")
    data = _read_json(path, "a list of task records")

    if isinstance(data, dict):
        entries = []
        for key, record in data.items():
            if isinstance(record, dict):
                record = {"name": key, **record}
            entries.append((f"task {key!r}", record))
    elif isinstance(data, list):
        entries = [(f"record {i}", record) for i, record in enumerate(data)]
    else:
        raise DataError(
            f"{path}: expected a list of task records or a dict name -> record, found {type(data).__name__}"
        )

    problems: list[str] = []
    infos: dict[str, TaskInfo] = {}
    seen: set[str] = set()  # names seen so far, valid or not, to report repeats
    for where, record in entries:
        if not isinstance(record, dict):
            problems.append(f"{path} {where}: expected an object, found {type(record).__name__}")
            continue
        name = record.get("name")
        if not isinstance(name, str) or not name:
            problems.append(f'{path} {where}: missing or empty "name". Fix: give each record a "name" string')
            continue
        where = f"task {name!r}"
        if name in seen:
            problems.append(f"{path} {where}: appears more than once. Fix: keep a single record per task")
            continue
        seen.add(name)
        metric = record.get("metric", "ACC")
        if metric not in METRICS:
            problems.append(
                f"{path} {where}: unknown metric {metric!r}{_close(str(metric), METRICS)}. "
                f"Fix: use one of {', '.join(METRICS)}"
            )
            continue
        task_type = record.get("task_type", "")
        if task_type and task_type not in TASK_TYPES:
            problems.append(
                f"{path} {where}: unknown task_type {task_type!r}. Fix: use one of {', '.join(TASK_TYPES)}"
            )
            continue
        is_cls = record.get("is_classification", task_type == "classification")
        category = record.get("category", "")
        if not isinstance(is_cls, bool):
            problems.append(f"{path} {where}: 'is_classification' must be true or false, got {is_cls!r}")
            continue
        if not isinstance(category, str):
            problems.append(f"{path} {where}: 'category' must be a string, got {category!r}")
            continue
        infos[name] = TaskInfo(name, metric, is_cls, category, task_type)
    _raise_if(problems, f"{path}: invalid tasks file")
    return infos


def load_split(path: str | Path, available: Iterable[str] | None = None) -> dict[str, list[str]]:
    """Read a task split in the paper's JSON form ``{"train": [...], "dev": [...], "test": [...]}``.

    Missing keys mean an empty list; the result always has all three keys. Train and test tasks
    must not overlap (the IPT evaluation is on *unseen* tasks).

    Args:
        available: the task names that exist (e.g. ``list_tasks(data_dir)``); when given, every
            listed task must be among them.

    Raises:
        DataError: listing every problem: unreadable JSON, unknown keys, non-string entries,
            duplicates, train/test overlap, tasks not in ``available`` (with closest matches).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: split file not found. Fix: pass the path of an existing split JSON file")
    data = _read_json(p, '{"train": [...], "dev": [...], "test": [...]}')
    if not isinstance(data, dict):
        raise DataError(
            f'{p}: expected an object {{"train": [...], "dev": [...], "test": [...]}}, '
            f"found {type(data).__name__}"
        )

    problems: list[str] = []
    for key in data:
        if key not in SPLITS:
            problems.append(
                f"{p}: unknown key {key!r}{_close(str(key), SPLITS)}. Fix: use only train, dev, test"
            )
    split: dict[str, list[str]] = {s: [] for s in SPLITS}
    for s in SPLITS:
        value = data.get(s, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            problems.append(f"{p} '{s}': must be a list of non-empty task-name strings, got {_short(value)}")
            continue
        repeated = sorted(n for n in set(value) if value.count(n) > 1)
        if repeated:
            problems.append(
                f"{p} '{s}': tasks listed more than once: {', '.join(repeated)}. Fix: list each once"
            )
        split[s] = list(dict.fromkeys(value))
    overlap = sorted(set(split["train"]) & set(split["test"]))
    if overlap:
        problems.append(
            f"{p}: tasks in both 'train' and 'test': {', '.join(overlap)}. "
            "Fix: test tasks must be unseen; remove them from one of the lists"
        )
    if not any(split.values()) and not problems:
        problems.append(f"{p}: lists no tasks. Fix: put task names under 'train', 'dev' and/or 'test'")
    if available is not None:
        known = set(available)
        for s in SPLITS:
            for n in split[s]:
                if n not in known:
                    problems.append(f"{p} '{s}': unknown task {n!r}{_close(n, known)}")
    _raise_if(problems, f"{p}: invalid task split")
    return split
