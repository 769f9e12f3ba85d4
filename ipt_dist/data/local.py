"""Tasks in a data directory: one folder per task, in one of two layouts.

- JSONL (the layout of ``shared/data``): ``{data_dir}/{task}/{train,dev,test}.jsonl``, one
  ``{"input": str, "output": str | [str], "options"?: [str], "references"?: [str]}`` per line.
- CrossFit "few-shot gym" TSV (the IPT paper's data): ``{data_dir}/{task}/{task}_{k}_{seed}_{split}.tsv``,
  one ``input<TAB>output[<TAB>alternative...]`` per line.

Metadata comes from ``tasks.json`` (`ipt_dist.data.metadata`). Every problem found in a directory
is listed in one `DataError`, with the file, the 1-based line and the fix. Plain Python; task-name
prefixes (``" [task_name] "``) are added by the tokenisation layer, not here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from ipt_dist.data.metadata import load_task_info
from ipt_dist.data.records import (
    _MAX_PROBLEMS_PER_FILE,
    LOCAL_FORMATS,
    SPLITS,
    DataError,
    Example,
    TaskData,
    TaskInfo,
    _close,
    _dedup,
    _make_example,
    _raise_if,
    cap_examples,
    check_max_examples,
)

__all__ = ["detect_format", "list_tasks", "load_task", "load_tasks"]

_UTF8_BOM = b"\xef\xbb\xbf"


# --------------------------------------------------------------------------------------------
# File parsers: each returns the examples and appends problems (never raises for bad data)
# --------------------------------------------------------------------------------------------


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
    raw = raw.removeprefix(_UTF8_BOM)  # files saved by Windows editors; the BOM is not part of the text
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
# Task discovery
# --------------------------------------------------------------------------------------------

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
    splits = {s: cap_examples(exs, max_examples) for s, exs in splits.items()}
    return TaskData(info=info, **splits)


def _check_args(fmt: str, max_examples: int | None) -> None:
    if fmt == "hf":
        raise ValueError("fmt 'hf' names a Hugging Face dataset, not a data directory: load it with load_hf_task")
    if fmt not in LOCAL_FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(LOCAL_FORMATS)}, got {fmt!r}")
    check_max_examples(max_examples)


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
