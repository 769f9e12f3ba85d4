"""Task records: the types every loader produces (`Example`, `TaskInfo`, `TaskData`), the names
they may hold (metrics, task types, splits, formats), and the checks that build one record.

Every problem in user data raises `DataError` (a `ValueError`) whose message names the file, the
1-based line (or the field) and the fix. Loaders collect every problem and raise once (`_raise_if`),
so a user fixes a data directory in one pass instead of one error per run.

Plain Python: no torch, no numpy (`ipt_dist.config` and `ipt_dist.metrics` import the names here).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ipt_dist.errors import UserError

__all__ = ["FORMATS", "LOCAL_FORMATS", "METRICS", "SPLITS", "TASK_TYPES", "DataError", "Example", "TaskData",
           "TaskInfo", "cap_examples", "check_max_examples"]

# Metric names exactly as CrossFit / the IPT reference code spell them (`ipt_dist.metrics` scores them).
METRICS = ("ACC", "Classification-F1", "EM", "QA-F1", "Rouge-L", "Matthew-Correlation")
TASK_TYPES = ("classification", "multiple_choice", "generation")
SPLITS = ("train", "dev", "test")
LOCAL_FORMATS = ("auto", "jsonl", "crossfit")  # layouts of a data directory (`data.local`)
FORMATS = (*LOCAL_FORMATS, "hf")  # every `data.format`; "hf" is a Hugging Face DatasetDict (`data.hf`)

# A broken file can have thousands of bad lines; list this many per file, then count the rest.
_MAX_PROBLEMS_PER_FILE = 10


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



def check_max_examples(max_examples: int | None) -> None:
    """Raises:
        ValueError: ``max_examples`` is neither None nor a positive integer."""
    if max_examples is not None and (not isinstance(max_examples, int) or max_examples < 1):
        raise ValueError(f"max_examples must be a positive integer or None, got {max_examples!r}")


def cap_examples(examples: list[Example], max_examples: int | None) -> list[Example]:
    """The first ``max_examples`` examples (all of them when None): the per-split cap of quick runs."""
    return examples if max_examples is None else examples[:max_examples]


# --------------------------------------------------------------------------------------------
# Building one record from user fields (shared by the JSONL and HF loaders)
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

