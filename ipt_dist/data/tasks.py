"""Raw task data: load few-shot text-to-text tasks from disk into plain Python objects.

Three on-disk sources are supported, all producing the same `TaskData`:

- JSONL (the layout of ``shared/data``): ``{data_dir}/{task}/{train,dev,test}.jsonl``, one
  ``{"input": str, "output": str | [str], "options"?: [str], "references"?: [str]}`` per line.
- CrossFit "few-shot gym" TSV (the IPT paper's data): ``{data_dir}/{task}/{task}_{k}_{seed}_{split}.tsv``,
  one ``input<TAB>output[<TAB>alternative...]`` per line.
- Hugging Face ``datasets`` (a ``save_to_disk`` directory or a hub name): `load_hf_task`.

Task metadata (metric, category, type) comes from a ``tasks.json`` file (`load_task_info`), task
splits of the IPT paper (train/dev/test *tasks*) from a small JSON file (`load_split`).

Every problem in user data raises `DataError` (a `ValueError`) whose message names the file, the
1-based line (or the field) and the fix. Loaders that read many files collect every problem and
raise once, so a user fixes a data directory in one pass instead of one error per run.

This module is plain Python: no torch, and `datasets` is imported only inside `load_hf_task`.
Task-name prefixes (``" [task_name] "``) are *not* added here; the tokenisation layer does that.
"""

from __future__ import annotations

import difflib
import json
import random
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ipt_dist.errors import UserError

__all__ = [
    "METRICS",
    "SPLITS",
    "TASK_TYPES",
    "DataError",
    "Example",
    "TaskData",
    "TaskInfo",
    "detect_format",
    "list_tasks",
    "load_hf_task",
    "load_split",
    "load_task",
    "load_task_info",
    "load_tasks",
    "write_demo_tasks",
]

# Metric names exactly as CrossFit / the IPT reference code spell them.
METRICS = ("ACC", "Classification-F1", "EM", "QA-F1", "Rouge-L", "Matthew-Correlation")
TASK_TYPES = ("classification", "multiple_choice", "generation")
SPLITS = ("train", "dev", "test")
FORMATS = ("auto", "jsonl", "crossfit")

# A broken file can have thousands of bad lines; list this many per file, then count the rest.
_MAX_PROBLEMS_PER_FILE = 10
_UTF8_BOM = b"\xef\xbb\xbf"


class DataError(UserError):
    """Bad input data: message names the file, line/field and the fix."""


# --------------------------------------------------------------------------------------------
# Data classes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    """One text-to-text example.

    ``outputs`` holds every acceptable answer (for metrics); ``outputs[0]`` is the training target.
    ``options`` is the label space (classification) or the per-example candidates (multiple choice).
    Lists are accepted and stored as tuples so examples are hashable and immutable.

    Raises:
        ValueError: ``outputs`` is empty or holds a non-string.
    """

    input: str
    outputs: tuple[str, ...]
    options: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        # frozen dataclass: object.__setattr__ is the sanctioned way to normalise fields.
        object.__setattr__(self, "outputs", tuple(self.outputs))
        if self.options is not None:
            object.__setattr__(self, "options", tuple(self.options))
        if not self.outputs:
            raise ValueError(f"Example(input={self.input[:40]!r}) has no outputs; give at least one answer")
        if not all(isinstance(o, str) for o in self.outputs):
            raise ValueError(
                f"Example(input={self.input[:40]!r}) outputs must be strings, got {self.outputs!r}"
            )

    @property
    def target(self) -> str:
        """The training target: the first acceptable output."""
        return self.outputs[0]


@dataclass(frozen=True)
class TaskInfo:
    """Task metadata: the metric it is scored with and how to group it in reports.

    Raises:
        DataError: ``metric`` is not a CrossFit metric name or ``task_type`` is unknown.
    """

    name: str
    metric: str = "ACC"  # CrossFit names: ACC, Classification-F1, EM, QA-F1, Rouge-L, Matthew-Correlation
    is_classification: bool = False
    category: str = ""  # e.g. tasks.json 'category'; used for plots
    task_type: str = ""  # classification | multiple_choice | generation ("" = unknown)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise DataError(f"TaskInfo.name must be a non-empty string, got {self.name!r}")
        if self.metric not in METRICS:
            raise DataError(
                f"task {self.name!r}: unknown metric {self.metric!r}. Fix: use one of {', '.join(METRICS)}"
            )
        if self.task_type and self.task_type not in TASK_TYPES:
            raise DataError(
                f"task {self.name!r}: unknown task_type {self.task_type!r}. "
                f"Fix: use one of {', '.join(TASK_TYPES)} (or leave it empty)"
            )


@dataclass
class TaskData:
    """A task's metadata and its three splits of examples."""

    info: TaskInfo
    train: list[Example] = field(default_factory=list)
    dev: list[Example] = field(default_factory=list)
    test: list[Example] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.info.name

    def split(self, split: str) -> list[Example]:
        """The examples of ``split`` ('train', 'dev' or 'test').

        Raises:
            ValueError: unknown split name.
        """
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        return getattr(self, split)


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _raise_if(problems: list[str], header: str) -> None:
    """Raise one DataError listing every problem (no-op when there are none)."""
    if problems:
        body = "\n".join(f"  - {p}" for p in problems)
        raise DataError(f"{header} ({len(problems)} problem{'s' * (len(problems) > 1)}):\n{body}")


def _close(name: str, choices: Iterable[str]) -> str:
    """' (closest: a, b)' suffix for "did you mean" hints, or ''."""
    matches = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.6)
    return f" (closest: {', '.join(matches)})" if matches else ""


def _dedup(items: Iterable[str]) -> tuple[str, ...]:
    """Drop repeated strings, keeping first-seen order (shared data has repeated references)."""
    return tuple(dict.fromkeys(items))


class _FileProblems:
    """Collects a file's problems, keeping the first few and counting the rest."""

    def __init__(self, path: Path, out: list[str]):
        self.path, self.out, self.n = path, out, 0

    def add(self, line: int | None, message: str) -> None:
        self.n += 1
        if self.n <= _MAX_PROBLEMS_PER_FILE:
            where = f"{self.path} line {line}" if line is not None else str(self.path)
            self.out.append(f"{where}: {message}")

    def close(self) -> None:
        if self.n > _MAX_PROBLEMS_PER_FILE:
            rest = self.n - _MAX_PROBLEMS_PER_FILE
            self.out.append(f"{self.path}: ... and {rest} more problems in this file")


def _iter_lines(path: Path, fp: _FileProblems) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, text) for each non-blank line; report bad UTF-8 per line.

    Decoding line by line (rather than the whole file) lets the error name the bad line.
    """
    raw = path.read_bytes()
    if raw.startswith(_UTF8_BOM):  # files saved by Windows editors; the BOM is not part of the text
        raw = raw[len(_UTF8_BOM) :]
    for lineno, bline in enumerate(raw.split(b"\n"), start=1):
        try:
            line = bline.decode("utf-8")
        except UnicodeDecodeError as e:
            fp.add(
                lineno,
                f"not valid UTF-8 (byte {bline[e.start:e.start + 1]!r} at column {e.start + 1}). "
                "Fix: re-save the file with UTF-8 encoding",
            )
            continue
        line = line.removesuffix("\r")  # tolerate CRLF line endings
        if line.strip():
            yield lineno, line


def _text(value: Any, key: str, report: Callable[[str], None]) -> str | None:
    """A non-empty string field, or None after reporting why not."""
    if not isinstance(value, str):
        report(f"'{key}' must be a string, got {type(value).__name__}. Fix: write '{key}' as a JSON string")
        return None
    if not value.strip():
        report(f"empty '{key}'. Fix: give a non-empty '{key}' or remove the example")
        return None
    return value


def _text_list(value: Any, key: str, report: Callable[[str], None]) -> tuple[str, ...] | None:
    """A non-empty list of non-empty strings, or None after reporting why not."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        report(
            f"'{key}' must be a list of strings, got {_short(value)}. Fix: write '{key}' as [\"...\", ...]"
        )
        return None
    if not value:
        report(f"'{key}' is an empty list. Fix: give at least one string or drop the '{key}' key")
        return None
    if any(not v.strip() for v in value):
        report(f"'{key}' holds an empty string. Fix: remove empty entries from '{key}'")
        return None
    return tuple(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _make_example(
    inp: Any,
    output: Any,
    references: Any,
    options: Any,
    report: Callable[[str], None],
    *,
    keys: dict[str, str],
) -> Example | None:
    """Validate one record's fields (shared by the JSONL and HF loaders) and build an Example.

    ``keys`` maps our field names to the user's (HF column names), so errors name what the user wrote.
    ``references`` / ``options`` are ``None`` when absent.
    """
    ok = True
    text_in = _text(inp, keys["input"], report)
    ok &= text_in is not None
    if isinstance(output, str):
        outs = (output,) if _text(output, keys["output"], report) is not None else None
    else:
        outs = _text_list(output, keys["output"], report)
    ok &= outs is not None
    refs: tuple[str, ...] = ()
    if references is not None:
        refs = _text_list(references, "references", report) or ()
        ok &= bool(refs)
    opts = None
    if options is not None:
        opts = _text_list(options, keys["options"], report)
        ok &= opts is not None
    if not ok:
        return None
    outputs = _dedup(outs + refs)  # type: ignore[operator]  (outs is not None here)
    if opts is not None and outputs[0] not in opts:
        # Rank classification scores the options; a target outside them can never be predicted.
        report(
            f"output {outputs[0]!r} is not one of the options {_short(list(opts))}. "
            "Fix: add it to the options or correct the output"
        )
        return None
    return Example(input=text_in, outputs=outputs, options=opts)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# File parsers: each returns the examples and appends problems (never raises for bad data)
# --------------------------------------------------------------------------------------------

_JSONL_KEYS = {"input": "input", "output": "output", "options": "options"}


def _parse_jsonl(path: Path, problems: list[str]) -> list[Example]:
    fp = _FileProblems(path, problems)
    examples: list[Example] = []
    for lineno, line in _iter_lines(path, fp):

        def report(msg: str, _n: int = lineno) -> None:
            fp.add(_n, msg)

        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            report(f"invalid JSON ({e.msg} at column {e.colno}). Fix: write one JSON object per line")
            continue
        if not isinstance(record, dict):
            report(
                f"expected a JSON object, found {type(record).__name__}. "
                'Fix: write each line as {"input": ..., "output": ...}'
            )
            continue
        missing = [k for k in ("input", "output") if k not in record]
        if missing:
            report(
                f"missing key{'s' * (len(missing) > 1)} {', '.join(repr(k) for k in missing)} "
                f"(found {', '.join(repr(k) for k in record) or 'no keys'}). "
                'Fix: each line needs {"input": str, "output": str or [str]}'
            )
            continue
        ex = _make_example(
            record["input"],
            record["output"],
            record.get("references"),
            record.get("options"),
            report,
            keys=_JSONL_KEYS,
        )
        if ex is not None:
            examples.append(ex)
    fp.close()
    if not examples and fp.n == 0:
        problems.append(f"{path}: no examples (the file is empty). Fix: add at least one example line")
    return examples


def _parse_tsv(path: Path, problems: list[str]) -> list[Example]:
    fp = _FileProblems(path, problems)
    examples: list[Example] = []
    for lineno, line in _iter_lines(path, fp):
        columns = line.split("\t")
        if len(columns) < 2:
            fp.add(
                lineno,
                "expected 'input<TAB>output', found no tab. "
                "Fix: separate input and output with a tab character",
            )
            continue
        inp, outputs = columns[0], columns[1:]
        bad = False
        if not inp.strip():
            fp.add(lineno, "empty input (column 1). Fix: write the input text before the first tab")
            bad = True
        for col, out in enumerate(outputs, start=2):
            if not out.strip():
                fp.add(
                    lineno,
                    f"empty output (column {col}). "
                    "Fix: write the answer after the tab, or remove the extra tab",
                )
                bad = True
        if not bad:
            # CrossFit convention: every column after the input is an acceptable answer.
            examples.append(Example(input=inp, outputs=_dedup(outputs)))
    fp.close()
    if not examples and fp.n == 0:
        problems.append(
            f"{path}: no examples (the file is empty). Fix: add at least one 'input<TAB>output' line"
        )
    return examples


# --------------------------------------------------------------------------------------------
# Task metadata and discovery
# --------------------------------------------------------------------------------------------


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


_CROSSFIT_RE = r"^{task}_(\d+)_(\d+)_(train|dev|test)\.tsv$"


def _crossfit_runs(task_dir: Path, name: str) -> set[tuple[int, int]]:
    """(k, seed) pairs for which ``{name}_{k}_{seed}_train.tsv`` exists in ``task_dir``."""
    pattern = re.compile(_CROSSFIT_RE.format(task=re.escape(name)))
    runs = set()
    if task_dir.is_dir():
        for p in task_dir.iterdir():
            m = pattern.match(p.name)
            if m and m.group(3) == "train":
                runs.add((int(m.group(1)), int(m.group(2))))
    return runs


def _detect(data_dir: Path, name: str) -> str | None:
    task_dir = data_dir / name
    if (task_dir / "train.jsonl").is_file():
        return "jsonl"
    if _crossfit_runs(task_dir, name):
        return "crossfit"
    return None


def list_tasks(data_dir: str | Path) -> list[str]:
    """Sorted names of the task directories under ``data_dir`` (JSONL or CrossFit layout).

    Raises:
        DataError: ``data_dir`` is not a directory.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(_no_data_dir(root))
    return sorted(
        p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and _detect(root, p.name)
    )


def _no_data_dir(root: Path) -> str:
    if root.exists():
        return (f"{root}: is a file, not a data directory. Fix: point data_dir at the folder holding the "
                "task folders")
    return f"{root}: data directory not found. Fix: point data_dir at the folder holding the tasks"


def _runs(runs: Iterable[tuple[int, int]]) -> str:
    return ", ".join(f"k={k} seed={seed}" for k, seed in sorted(runs))


def _missing_task_message(root: Path, name: str) -> str:
    task_dir = root / name
    if not root.is_dir():
        return _no_data_dir(root)
    if not task_dir.is_dir():
        return (
            f"{task_dir}: no such task directory{_close(name, list_tasks(root))}. "
            "Fix: check the task name or data_dir"
        )
    return (
        f"{task_dir}: not a task directory: looked for train.jsonl (JSONL layout) and "
        f"{name}_<k>_<seed>_train.tsv (CrossFit layout). Fix: add the split files in one of these layouts"
    )


def detect_format(data_dir: str | Path, name: str) -> str:
    """'jsonl' if ``{name}/train.jsonl`` exists, 'crossfit' if ``{name}/{name}_*_train.tsv`` exists.

    JSONL wins when both exist.

    Raises:
        DataError: neither layout is found; the message lists what was looked for.
    """
    root = Path(data_dir)
    fmt = _detect(root, name)
    if fmt is None:
        raise DataError(_missing_task_message(root, name))
    return fmt


# --------------------------------------------------------------------------------------------
# Loading tasks
# --------------------------------------------------------------------------------------------


def _split_files(
    root: Path, name: str, fmt: str, k: int | None, seed: int | None, problems: list[str]
) -> dict[str, Path] | None:
    """The three split files of a task, or None after reporting why they cannot be chosen."""
    task_dir = root / name
    if fmt == "jsonl":
        if k is not None or seed is not None:
            # Silently ignoring k/seed would make a run look k-shot when it is not.
            problems.append(
                f"{task_dir}: k/seed select CrossFit files ({name}_<k>_<seed>_<split>.tsv) but this task is "
                "in JSONL layout with a single set of splits. Fix: leave k/data_seed unset "
                "(use max_examples to shorten splits)"
            )
            return None
        files = {s: task_dir / f"{s}.jsonl" for s in SPLITS}
    else:
        runs = _crossfit_runs(task_dir, name)
        chosen = sorted(r for r in runs if (k is None or r[0] == k) and (seed is None or r[1] == seed))
        listing = _runs(runs)
        if not runs:
            problems.append(
                f"{task_dir}: no CrossFit files ({name}_<k>_<seed>_train.tsv). "
                "Fix: add them, or use fmt='auto'/'jsonl' for a JSONL task"
            )
            return None
        if not chosen:
            problems.append(
                f"{task_dir}: no CrossFit files for k={k} seed={seed}; available: {listing}. "
                "Fix: set k/data_seed to one of the available runs"
            )
            return None
        if len(chosen) > 1:
            problems.append(
                f"{task_dir}: several CrossFit runs match ({_runs(chosen)}). "
                "Fix: set `k`/`data_seed` (k=..., seed=... in load_task) to pick one"
            )
            return None
        ck, cs = chosen[0]
        files = {s: task_dir / f"{name}_{ck}_{cs}_{s}.tsv" for s in SPLITS}
        if not files["test"].is_file() and (task_dir / f"{name}_test.tsv").is_file():
            # Some CrossFit copies keep one shared test file instead of one per (k, seed).
            files["test"] = task_dir / f"{name}_test.tsv"
    for split, path in files.items():
        if not path.is_file():
            problems.append(
                f"{path}: {split} split file not found. Fix: add the file or check the data layout"
            )
    return files if all(p.is_file() for p in files.values()) else None


def _load_task_data(
    root: Path,
    name: str,
    fmt: str,
    k: int | None,
    seed: int | None,
    info: TaskInfo | None,
    max_examples: int | None,
    problems: list[str],
) -> TaskData | None:
    """Load one task, appending every problem found; None if any."""
    n_before = len(problems)
    task_fmt = _detect(root, name) if fmt == "auto" else fmt
    if task_fmt is None or not (root / name).is_dir():
        problems.append(_missing_task_message(root, name))
        return None
    files = _split_files(root, name, task_fmt, k, seed, problems)
    if files is None:
        return None
    parse = _parse_jsonl if task_fmt == "jsonl" else _parse_tsv
    splits = {split: parse(path, problems) for split, path in files.items()}
    if len(problems) > n_before or info is None:
        return None
    if max_examples is not None:
        splits = {s: exs[:max_examples] for s, exs in splits.items()}
    return TaskData(info=info, **splits)


def _check_args(fmt: str, max_examples: int | None) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if max_examples is not None and (not isinstance(max_examples, int) or max_examples < 1):
        raise ValueError(f"max_examples must be a positive integer or None, got {max_examples!r}")


def _resolve_infos(
    root: Path, names: Sequence[str], tasks_file: str | Path | None, problems: list[str]
) -> dict[str, TaskInfo]:
    """TaskInfo per name from the tasks file (default ``root/tasks.json``) or defaults without one."""
    path = Path(tasks_file) if tasks_file is not None else root / "tasks.json"
    if tasks_file is None and not path.is_file():
        return {n: TaskInfo(n) for n in names}  # no metadata anywhere: default metric ACC
    try:
        infos = load_task_info(path)
    except DataError as e:
        problems.append(str(e))
        return {}
    out = {}
    for n in names:
        if n in infos:
            out[n] = infos[n]
        else:
            problems.append(
                f"{path}: no record for task {n!r}{_close(n, infos)}. "
                f'Fix: add {{"name": "{n}", "metric": ...}} to it (or pass a tasks_file that describes it)'
            )
    return out


def load_task(
    data_dir: str | Path,
    name: str,
    *,
    fmt: str = "auto",
    k: int | None = None,
    seed: int | None = None,
    info: TaskInfo | None = None,
    max_examples: int | None = None,
) -> TaskData:
    """Load one task's train/dev/test examples from ``data_dir/name``.

    Args:
        fmt: "auto" (see `detect_format`), "jsonl" or "crossfit".
        k, seed: pick the CrossFit run ``{name}_{k}_{seed}_*.tsv``; optional when only one run exists.
            Not allowed for JSONL tasks.
        info: metadata to attach; by default the record in ``data_dir/tasks.json`` when that file
            exists, else ``TaskInfo(name)`` (metric ACC).
        max_examples: keep at most this many examples per split (quick runs).

    Raises:
        DataError: the task is missing or any of its files is malformed (all problems listed).
        ValueError: bad ``fmt`` or ``max_examples``.
    """
    if info is None:
        return load_tasks(data_dir, [name], fmt=fmt, k=k, seed=seed, max_examples=max_examples)[name]
    _check_args(fmt, max_examples)
    if info.name != name:
        raise ValueError(f"info.name {info.name!r} does not match the task name {name!r}")
    problems: list[str] = []
    task = _load_task_data(Path(data_dir), name, fmt, k, seed, info, max_examples, problems)
    _raise_if(problems, f"cannot load task {name!r} from {data_dir}")
    assert task is not None
    return task


def load_tasks(
    data_dir: str | Path,
    names: Iterable[str],
    *,
    fmt: str = "auto",
    k: int | None = None,
    seed: int | None = None,
    tasks_file: str | Path | None = None,
    max_examples: int | None = None,
) -> dict[str, TaskData]:
    """Load many tasks, in the order given; see `load_task` for the arguments.

    Metadata comes from ``tasks_file`` (default ``data_dir/tasks.json`` when it exists). Without
    any tasks file every task gets ``TaskInfo(name)`` (metric ACC); with one, a task it lacks is an
    error, because silently scoring e.g. a Rouge-L task with ACC would corrupt results.

    Raises:
        DataError: listing EVERY problem at once: unknown task directories, malformed lines,
            empty splits, unknown metrics, missing tasks.json records, duplicate names.
        ValueError: bad ``fmt`` or ``max_examples``.
    """
    _check_args(fmt, max_examples)
    root = Path(data_dir)
    names = list(names)
    problems: list[str] = []
    bad_names = [n for n in names if not isinstance(n, str) or not n]
    if bad_names:
        problems.append(f"task names must be non-empty strings, got {bad_names!r}")
    names = [n for n in names if isinstance(n, str) and n]
    repeated = sorted(n for n in set(names) if names.count(n) > 1)
    if repeated:
        problems.append(f"task names listed more than once: {', '.join(repeated)}. Fix: list each task once")
    names = list(dict.fromkeys(names))
    if not names and not problems:
        problems.append("no task names given. Fix: list at least one task")
    if not root.is_dir():
        problems.append(_no_data_dir(root))
        _raise_if(problems, f"cannot load tasks from {root}")

    infos = _resolve_infos(root, names, tasks_file, problems)
    tasks: dict[str, TaskData] = {}
    for n in names:
        task = _load_task_data(root, n, fmt, k, seed, infos.get(n), max_examples, problems)
        if task is not None:
            tasks[n] = task
    _raise_if(problems, f"cannot load tasks from {root}")
    return tasks


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


# --------------------------------------------------------------------------------------------
# Hugging Face datasets
# --------------------------------------------------------------------------------------------


def load_hf_task(
    source: str,
    name: str,
    *,
    input_column: str = "input",
    output_column: str = "output",
    options_column: str | None = None,
    splits: dict[str, str] | None = None,
    info: TaskInfo | None = None,
    max_examples: int | None = None,
) -> TaskData:
    """Load a task from a Hugging Face ``DatasetDict``.

    Args:
        source: a directory written by ``DatasetDict.save_to_disk`` or a hub dataset name
            (``datasets.load_dataset(source)``).
        input_column, output_column: the output column may hold a string, a list of strings (all
            acceptable, the first is the target) or a ``ClassLabel`` integer (mapped to its name,
            and the label names become the options when ``options_column`` is not given).
        options_column: optional column with a list of candidate strings per row.
        splits: our split -> dataset split; defaults train->train, dev->validation (or dev),
            test->test. Only the keys train, dev, test are allowed.
        info: metadata; default ``TaskInfo(name)``.
        max_examples: keep at most this many examples per split.

    Raises:
        DataError: the dataset cannot be loaded, is a single Dataset, lacks a split or a column
            (the message lists what is available), or a row is malformed (all problems listed).
    """
    import datasets  # lazy: importing datasets costs ~1 s and is only needed here

    if max_examples is not None and (not isinstance(max_examples, int) or max_examples < 1):
        raise ValueError(f"max_examples must be a positive integer or None, got {max_examples!r}")
    unknown = sorted(set(splits or {}) - set(SPLITS))
    if unknown:
        raise DataError(
            f"splits: unknown keys {unknown}. Fix: map only train, dev, test to dataset split names"
        )

    if Path(source).exists():
        try:
            ds = datasets.load_from_disk(str(source))
        except Exception as e:  # datasets raises several types for a bad directory
            raise DataError(
                f"{source}: cannot read it as a saved dataset ({type(e).__name__}: {e}). "
                "Fix: write it with DatasetDict.save_to_disk"
            ) from e
    else:
        try:
            ds = datasets.load_dataset(source)
        except Exception as e:  # offline, unknown name, ... all mean the same to the user
            raise DataError(
                f"{source!r}: no such directory, and loading it from the hub failed "
                f"({type(e).__name__}: {e}). "
                "Fix: pass a save_to_disk directory or a reachable hub dataset name"
            ) from e
    if not isinstance(ds, datasets.DatasetDict):
        raise DataError(
            f"{source}: holds a single {type(ds).__name__}, "
            "expected a DatasetDict with train/dev/test splits. "
            "Fix: save DatasetDict({'train': ..., 'validation': ..., 'test': ...})"
        )

    available = list(ds.keys())
    mapping = {"train": "train", "dev": "validation" if "validation" in ds else "dev", "test": "test"}
    mapping.update(splits or {})
    problems: list[str] = []
    for ours, theirs in mapping.items():
        if theirs not in ds:
            problems.append(
                f"{source}: no split {theirs!r} for our '{ours}' split; available: {', '.join(available)}. "
                f"Fix: pass splits={{'{ours}': <one of them>}}"
            )
    _raise_if(problems, f"cannot load HF task {name!r}")

    keys = {"input": input_column, "output": output_column, "options": options_column or "options"}
    out: dict[str, list[Example]] = {}
    for ours, theirs in mapping.items():
        dset = ds[theirs]
        wanted = [c for c in (input_column, output_column, options_column) if c is not None]
        missing = [c for c in wanted if c not in dset.column_names]
        if missing:
            problems.append(
                f"{source} split {theirs!r}: no column {', '.join(repr(c) for c in missing)}; "
                f"available: {', '.join(dset.column_names)}. "
                "Fix: pass input_column/output_column/options_column"
            )
            continue
        feature = dset.features[output_column]
        label_names = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
        inputs, outputs = dset[input_column], dset[output_column]
        if label_names is not None:
            n_labels = len(label_names)
            outputs = [label_names[o] if isinstance(o, int) and 0 <= o < n_labels else o for o in outputs]
        options = dset[options_column] if options_column else [label_names] * len(dset)
        examples: list[Example] = []
        n_bad = 0
        for i, (inp, outp, opts) in enumerate(zip(inputs, outputs, options)):

            def report(msg: str, _i: int = i) -> None:
                nonlocal n_bad
                n_bad += 1
                if n_bad <= _MAX_PROBLEMS_PER_FILE:
                    problems.append(f"{source} split {theirs!r} row {_i} (0-based): {msg}")

            ex = _make_example(inp, outp, None, opts, report, keys=keys)
            if ex is not None:
                examples.append(ex)
        if n_bad > _MAX_PROBLEMS_PER_FILE:
            rest = n_bad - _MAX_PROBLEMS_PER_FILE
            problems.append(f"{source} split {theirs!r}: ... and {rest} more problems")
        if len(dset) == 0:
            problems.append(
                f"{source} split {theirs!r}: no rows. Fix: map '{ours}' to a split that has examples"
            )
        out[ours] = examples[:max_examples] if max_examples else examples
    _raise_if(problems, f"cannot load HF task {name!r}")
    return TaskData(info=info or TaskInfo(name), **out)


# --------------------------------------------------------------------------------------------
# Synthetic demo tasks
# --------------------------------------------------------------------------------------------
# Tiny, seeded tasks over a ~150-word vocabulary so that the project can train and test
# end to end without shared/data. They share lexicons (sentiment words, topic nouns, colours)
# and input templates, so their soft prompts should differ along a few directions only: the
# low-dimensional task subspace IPT looks for.

_POSITIVE = ("good", "great", "happy", "nice", "lovely", "fun", "sweet", "fine")
_NEGATIVE = ("bad", "awful", "sad", "poor", "ugly", "boring", "nasty", "dull")
_TOPICS = {
    "sports": ("ball", "goal", "team", "match", "coach", "race", "tennis", "player"),
    "food": ("bread", "soup", "cake", "rice", "apple", "cheese", "pizza", "pasta"),
    "animals": ("dog", "cat", "horse", "bird", "fish", "cow", "rabbit", "sheep"),
    "music": ("song", "drum", "piano", "band", "guitar", "singer", "concert", "violin"),
}
_COLOURS = ("red", "blue", "green", "yellow", "black", "white", "pink", "brown")
_DETS = ("the", "this", "that", "my", "our", "your", "her", "his")
_PRONOUNS = ("we", "they", "i", "you", "she", "he")
_VERBS = ("saw", "liked", "found", "made", "got", "watched", "heard", "wanted")
_WHEN = ("today", "yesterday", "again", "at home", "last week", "this morning")
_INTENSIFIERS = ("very", "really", "quite", "so")
_NOUNS = tuple(w for words in _TOPICS.values() for w in words)

# A generator gets an rng and the example index (used to balance labels) and returns
# (input, outputs, options or None).
_Gen = Callable[[random.Random, int], tuple[str, list[str], list[str] | None]]


def _maybe(rng: random.Random, words: Sequence[str], p: float = 0.5) -> list[str]:
    return [rng.choice(words)] if rng.random() < p else []


def _gen_sentiment(rng: random.Random, i: int):
    label = ("negative", "positive")[i % 2]
    adj = rng.choice(_POSITIVE if label == "positive" else _NEGATIVE)
    intens = _maybe(rng, _INTENSIFIERS)
    words = [rng.choice(_DETS), rng.choice(_NOUNS), "was", *intens, adj, *_maybe(rng, _WHEN)]
    return " ".join(words), [label], ["negative", "positive"]


def _gen_sentiment_negated(rng: random.Random, i: int):
    label = ("negative", "positive")[i % 2]
    negated = (i // 2) % 2 == 1  # balanced over (label, negated)
    lexicon = _POSITIVE if (label == "positive") != negated else _NEGATIVE
    words = [rng.choice(_DETS), rng.choice(_NOUNS), "was", *(["not"] if negated else []), rng.choice(lexicon)]
    return " ".join(words + _maybe(rng, _WHEN)), [label], ["negative", "positive"]


def _gen_topic(rng: random.Random, i: int):
    labels = sorted(_TOPICS)
    label = labels[i % len(labels)]
    nouns = _TOPICS[label]
    words = [rng.choice(_PRONOUNS), rng.choice(_VERBS), rng.choice(_DETS), rng.choice(nouns)]
    if rng.random() < 0.5:
        words += ["and", rng.choice(_DETS), rng.choice(nouns)]
    return " ".join(words + _maybe(rng, _WHEN, 0.3)), [label], labels


# Same label words as demo_topic (plus colours), so the two tasks share an output space.
_GROUPS = {**_TOPICS, "colours": _COLOURS}


def _gen_word_group(rng: random.Random, i: int):
    labels = sorted(_GROUPS)
    label = labels[i % len(labels)]
    word = rng.choice(_GROUPS[label])
    template = rng.choice((
        "the word {w} is in the group", "which group is {w} in", "{w} belongs to what group",
        "name the group of {w}", "group of the word {w}", "{d} {w} is in which group",
    ))
    return template.format(w=word, d=rng.choice(_DETS)), [label], labels


def _gen_parity(rng: random.Random, i: int):
    label = ("even", "odd")[i % 2]
    n = rng.randrange(0, 100, 2) + (label == "odd")
    template = rng.choice(
        ("the number is {n}", "{p} counted {n} of them", "{p} have {n} {x} now", "is {n} even or odd")
    )
    text = template.format(n=n, p=rng.choice(_PRONOUNS), x=rng.choice(_NOUNS))
    return text, [label], ["even", "odd"]


def _gen_has_colour(rng: random.Random, i: int):
    label = ("no", "yes")[i % 2]
    words = rng.sample(_NOUNS, rng.randint(3, 6))
    if label == "yes":
        words.insert(rng.randrange(len(words) + 1), rng.choice(_COLOURS))
    return " ".join(words), [label], ["no", "yes"]


def _gen_pick_animal(rng: random.Random, i: int):
    others = [w for t, ws in _TOPICS.items() if t != "animals" for w in ws] + list(_COLOURS)
    answer = rng.choice(_TOPICS["animals"])
    options = [*rng.sample(others, 2), answer]
    rng.shuffle(options)
    return "pick the animal : " + " ".join(options), [answer], options


def _word_list(rng: random.Random) -> list[str]:
    return rng.sample(_NOUNS + _COLOURS + _POSITIVE + _NEGATIVE, rng.randint(3, 6))


def _gen_copy_first(rng: random.Random, i: int):
    words = _word_list(rng)
    return " ".join(words), [words[0]], None


def _gen_copy_last(rng: random.Random, i: int):
    words = _word_list(rng)
    return " ".join(words), [words[-1]], None


def _gen_first_two(rng: random.Random, i: int):
    words = _word_list(rng)
    return " ".join(words), [" ".join(words[:2])], None


def _gen_sentiment_word(rng: random.Random, i: int):
    adj = rng.choice(_POSITIVE if i % 2 else _NEGATIVE)
    intens = _maybe(rng, _INTENSIFIERS)
    words = [rng.choice(_DETS), rng.choice(_NOUNS), "was", *intens, adj, *_maybe(rng, _WHEN)]
    # With an intensifier both "very good" and "good" are acceptable answers (exercises references).
    outputs = [" ".join(intens + [adj]), adj] if intens else [adj]
    return " ".join(words), outputs, None


# name -> (generator, category, task_type, metric)
_DEMO_TASKS: dict[str, tuple[_Gen, str, str, str]] = {
    "demo_sentiment": (_gen_sentiment, "classification/sentiment", "classification", "ACC"),
    "demo_sentiment_negated": (
        _gen_sentiment_negated, "classification/sentiment", "classification", "Classification-F1"),
    "demo_topic": (_gen_topic, "classification/topic", "classification", "ACC"),
    "demo_word_group": (_gen_word_group, "classification/topic", "classification", "Classification-F1"),
    "demo_parity": (_gen_parity, "classification/number", "classification", "ACC"),
    "demo_has_colour": (_gen_has_colour, "classification/detection", "classification", "Classification-F1"),
    "demo_pick_animal": (_gen_pick_animal, "multiple_choice/lexical", "multiple_choice", "ACC"),
    "demo_copy_first": (_gen_copy_first, "generation/copy", "generation", "EM"),
    "demo_copy_last": (_gen_copy_last, "generation/copy", "generation", "EM"),
    "demo_first_two": (_gen_first_two, "generation/copy", "generation", "Rouge-L"),
    "demo_sentiment_word": (_gen_sentiment_word, "generation/extraction", "generation", "QA-F1"),
}


def _demo_split_records(name: str, gen: _Gen, sizes: dict[str, int], seed: int) -> dict[str, list[dict]]:
    # crc32, not hash(): str hashes are salted per process and would break determinism.
    rng = random.Random(seed * 1_000_003 + zlib.crc32(name.encode()))
    total = sum(sizes.values())
    seen: set[str] = set()
    records: list[dict] = []
    misses = 0  # consecutive duplicate inputs: many in a row means the input space is used up
    while len(records) < total:
        inp, outputs, options = gen(rng, len(records))
        if inp in seen:  # splits are disjoint by input, like shared/data
            misses += 1
            if misses > 5000:
                raise ValueError(
                    f"demo task {name!r}: cannot make {total} distinct inputs "
                    f"(stuck at {len(records)}); lower n_train/n_dev/n_test"
                )
            continue
        misses = 0
        seen.add(inp)
        rec: dict[str, Any] = {"input": inp, "output": outputs[0]}
        if options is not None:
            rec["options"] = options
        if len(outputs) > 1:
            rec["references"] = outputs  # shared/data convention: references start with the output
        records.append(rec)
    # Labels were generated round-robin (balanced); shuffle so splits are not ordered by label.
    rng.shuffle(records)
    out, start = {}, 0
    for split, n in sizes.items():
        out[split] = records[start : start + n]
        start += n
    return out


def write_demo_tasks(
    out_dir: str | Path, *, n_train: int = 32, n_dev: int = 16, n_test: int = 32, seed: int = 0
) -> list[str]:
    """Write the synthetic demo tasks in the JSONL layout plus a ``tasks.json``; return their names.

    Output is deterministic in (sizes, seed): two calls write byte-identical files. Each task has
    at least ~500 distinct inputs, so a few hundred examples per task are possible.

    Raises:
        ValueError: a size is not positive, or too large for a task's input space.
    """
    sizes = {"train": n_train, "dev": n_dev, "test": n_test}
    for split, n in sizes.items():
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n_{split} must be a positive integer, got {n!r}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    records = []
    for name, (gen, category, task_type, metric) in _DEMO_TASKS.items():
        splits = _demo_split_records(name, gen, sizes, seed)
        task_dir = root / name
        task_dir.mkdir(exist_ok=True)
        for split, rows in splits.items():
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            (task_dir / f"{split}.jsonl").write_text(text, encoding="utf-8")
        record: dict[str, Any] = {
            "name": name,
            "source": "synthetic demo (ipt_dist.data.write_demo_tasks)",
            "category": category,
            "task_type": task_type,
            "is_classification": task_type == "classification",
            "metric": metric,
        }
        if task_type == "classification":
            record["label_space"] = splits["train"][0]["options"]
        record.update({f"n_{s}": n for s, n in sizes.items()})
        records.append(record)
    (root / "tasks.json").write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    return list(_DEMO_TASKS)
