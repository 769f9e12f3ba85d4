"""Tasks from Hugging Face ``datasets``: a ``save_to_disk`` directory or a hub name (`load_hf_task`).

Rows are checked as JSONL records are (`records._make_example`); every problem is listed in one
`DataError`. `datasets` is imported only inside `load_hf_task` (importing it costs ~1 s).
"""

from __future__ import annotations

from pathlib import Path

from ipt_dist.data.records import (
    _MAX_PROBLEMS_PER_FILE,
    SPLITS,
    DataError,
    Example,
    TaskData,
    TaskInfo,
    _make_example,
    _raise_if,
    cap_examples,
    check_max_examples,
)

__all__ = ["load_hf_task"]


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

    check_max_examples(max_examples)
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
                    problems.append(
                        f"{source} split {theirs!r} row {_i} (0-based): {msg}"  # noqa: B023 - called in this iteration
                    )

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
        out[ours] = cap_examples(examples, max_examples)
    _raise_if(problems, f"cannot load HF task {name!r}")
    return TaskData(info=info or TaskInfo(name), **out)
