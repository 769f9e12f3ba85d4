"""Tests for ipt_dist.data.tasks: every format, every data error, splits, metadata, HF, demo tasks.

Run: PYTHONPATH=. python -m pytest tests/data -q -p no:cacheprovider
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ipt_dist.data import (
    METRICS,
    DataError,
    Example,
    TaskData,
    TaskInfo,
    detect_format,
    list_tasks,
    load_hf_task,
    load_split,
    load_task,
    load_task_info,
    load_tasks,
    write_demo_tasks,
)

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SHARED_TASKS = SHARED_DATA / "tasks"
needs_shared = pytest.mark.skipif(not SHARED_TASKS.is_dir(), reason=f"{SHARED_TASKS} not present")


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------------------
# data classes
# ------------------------------------------------------------------------------------------


def test_example_normalises_lists_and_target():
    ex = Example("q", ["a", "b"], ["a", "b", "c"])
    assert ex.outputs == ("a", "b") and ex.options == ("a", "b", "c")
    assert ex.target == "a"
    hash(ex)  # frozen + tuples -> hashable
    with pytest.raises(ValueError, match="no outputs"):
        Example("q", ())


def test_taskinfo_validates_metric_and_type():
    assert TaskInfo("t").metric == "ACC"
    with pytest.raises(DataError, match="unknown metric 'F1'"):
        TaskInfo("t", metric="F1")
    with pytest.raises(DataError, match="unknown task_type"):
        TaskInfo("t", task_type="regression")


def test_taskdata_name_and_split():
    td = TaskData(TaskInfo("t"), [Example("a", ("b",))], [], [])
    assert td.name == "t" and td.split("train") == td.train
    with pytest.raises(ValueError, match="unknown split"):
        td.split("validation")


# ------------------------------------------------------------------------------------------
# JSONL format
# ------------------------------------------------------------------------------------------


def test_load_jsonl_task(tmp_path):
    write_jsonl_task(
        tmp_path,
        "t",
        {
            "train": [
                {"input": "q1", "output": "a", "options": ["a", "b"]},
                {"input": "q2", "output": "a", "references": ["a", "A", "A"]},  # output repeated in refs
                {"input": "q3", "output": ["b", "c", "b"]},
                "",  # blank lines are skipped
                {"input": "q4", "output": "d", "extra": 1},  # unknown keys ignored
            ]
        },
    )
    td = load_task(tmp_path, "t")
    assert td.name == "t" and td.info == TaskInfo("t")  # no tasks.json -> default ACC
    assert [e.input for e in td.train] == ["q1", "q2", "q3", "q4"]
    assert td.train[0].options == ("a", "b")
    assert td.train[1].outputs == ("a", "A")  # deduplicated, order kept
    assert td.train[2].outputs == ("b", "c") and td.train[2].target == "b"
    assert len(td.dev) == 1 and len(td.test) == 1


def test_jsonl_crlf_and_bom(tmp_path):
    task_dir = write_jsonl_task(tmp_path, "t")
    (task_dir / "train.jsonl").write_bytes(
        b'\xef\xbb\xbf{"input": "a", "output": "b"}\r\n{"input": "c", "output": "d"}\r\n'
    )
    assert [e.target for e in load_task(tmp_path, "t").train] == ["b", "d"]


@pytest.mark.parametrize(
    "line, expected",
    [
        ("{not json", "line 2: invalid JSON"),
        ('["input", "output"]', "line 2: expected a JSON object, found list"),
        ('{"input": "q"}', "line 2: missing key 'output'"),
        ('{"output": "q"}', "line 2: missing key 'input'"),
        ('{"input": 3, "output": "a"}', "line 2: 'input' must be a string, got int"),
        ('{"input": "q", "output": 3}', "line 2: 'output' must be a list of strings"),
        ('{"input": "q", "output": ["a", 1]}', "line 2: 'output' must be a list of strings"),
        ('{"input": "q", "output": []}', "line 2: 'output' is an empty list"),
        ('{"input": "  ", "output": "a"}', "line 2: empty 'input'"),
        ('{"input": "q", "output": ""}', "line 2: empty 'output'"),
        ('{"input": "q", "output": "a", "options": "a"}', "line 2: 'options' must be a list of strings"),
        ('{"input": "q", "output": "a", "options": ["b"]}', "line 2: output 'a' is not one of the options"),
        ('{"input": "q", "output": "a", "references": [""]}', "line 2: 'references' holds an empty string"),
    ],
)
def test_jsonl_line_errors(tmp_path, line, expected):
    write_jsonl_task(tmp_path, "t", {"train": [{"input": "ok", "output": "ok"}, line]})
    msg = error_of(load_task, tmp_path, "t")
    path = tmp_path / "t" / "train.jsonl"
    assert f"{path} {expected}" in msg
    assert "Fix:" in msg


def test_jsonl_non_utf8_names_the_line(tmp_path):
    write_jsonl_task(tmp_path, "t", {"dev": [{"input": "ok", "output": "ok"}, {"input": "ok2", "output": "o"},
                                             b'{"input": "caf\xe9", "output": "x"}']})
    msg = error_of(load_task, tmp_path, "t")
    assert f"{tmp_path / 't' / 'dev.jsonl'} line 3: not valid UTF-8" in msg
    assert "re-save the file with UTF-8" in msg


def test_jsonl_empty_split_is_an_error(tmp_path):
    write_jsonl_task(tmp_path, "t", {"test": []})
    msg = error_of(load_task, tmp_path, "t")
    assert f"{tmp_path / 't' / 'test.jsonl'}: no examples" in msg


def test_jsonl_missing_split_file(tmp_path):
    (write_jsonl_task(tmp_path, "t") / "dev.jsonl").unlink()
    assert "dev split file not found" in error_of(load_task, tmp_path, "t")


def test_all_problems_of_a_file_are_listed_and_capped(tmp_path):
    lines = [f'{{"input": "q{i}"}}' for i in range(25)]
    write_jsonl_task(tmp_path, "t", {"train": lines, "dev": ["[1]"]})
    msg = error_of(load_task, tmp_path, "t")
    assert "line 1: missing key 'output'" in msg and "line 10: missing key" in msg
    assert "line 11:" not in msg and "15 more problems" in msg
    assert "dev.jsonl line 1: expected a JSON object" in msg  # the other file's problem too


def test_max_examples_truncates_each_split(tmp_path):
    write_jsonl_task(tmp_path, "t", {"train": [{"input": f"q{i}", "output": "a"} for i in range(10)]})
    td = load_task(tmp_path, "t", max_examples=3)
    assert [e.input for e in td.train] == ["q0", "q1", "q2"] and len(td.dev) == 1
    with pytest.raises(ValueError, match="max_examples"):
        load_task(tmp_path, "t", max_examples=0)


def test_jsonl_rejects_k_and_seed(tmp_path):
    write_jsonl_task(tmp_path, "t")
    assert "k/seed select CrossFit files" in error_of(load_task, tmp_path, "t", k=16)


# ------------------------------------------------------------------------------------------
# CrossFit TSV format
# ------------------------------------------------------------------------------------------


def test_load_crossfit_task(tmp_path):
    write_tsv_task(tmp_path, "glue-sst2")
    assert detect_format(tmp_path, "glue-sst2") == "crossfit"
    td = load_task(tmp_path, "glue-sst2")
    assert [(e.input, e.outputs) for e in td.train] == [("in one", ("out1",)), ("in two", ("out2",))]
    assert td.test[0].outputs == ("out2", "alt")  # columns after the input are all acceptable answers
    assert td.train[0].options is None


def test_crossfit_several_runs_need_k_and_seed(tmp_path):
    write_tsv_task(tmp_path, "t", k=16, seed=13)
    write_tsv_task(tmp_path, "t", k=16, seed=21, rows={"train": "other\tz\n"})
    write_tsv_task(tmp_path, "t", k=32, seed=13)
    msg = error_of(load_task, tmp_path, "t")
    assert "k=16 seed=13, k=16 seed=21, k=32 seed=13" in msg and "`k`/`data_seed`" in msg
    assert "k=16 seed=21" in error_of(load_task, tmp_path, "t", k=16)  # still ambiguous
    assert load_task(tmp_path, "t", k=16, seed=21).train[0].input == "other"
    assert load_task(tmp_path, "t", k=32).train[0].input == "in one"  # unique with k alone
    msg = error_of(load_task, tmp_path, "t", k=64)
    assert "no CrossFit files for k=64" in msg and "available: k=16 seed=13" in msg


def test_crossfit_shared_test_file_fallback(tmp_path):
    task_dir = write_tsv_task(tmp_path, "t")
    (task_dir / "t_16_13_test.tsv").rename(task_dir / "t_test.tsv")
    assert load_task(tmp_path, "t").test[0].input == "in four"


def test_crossfit_task_name_with_underscores_is_not_confused(tmp_path):
    write_tsv_task(tmp_path, "ade_corpus_v2-dosage")
    (tmp_path / "ade_corpus_v2-dosage" / "ade_corpus_v2-dosage_extra_16_13_train.tsv").write_text("a\tb\n")
    assert len(load_task(tmp_path, "ade_corpus_v2-dosage").train) == 2


@pytest.mark.parametrize(
    "text, expected",
    [
        ("ok\tfine\nno tab here\n", "line 2: expected 'input<TAB>output', found no tab. "
         "Fix: separate input and output with a tab character"),
        ("ok\tfine\n\tanswer\n", "line 2: empty input (column 1)"),
        ("ok\tfine\nquestion\t \n", "line 2: empty output (column 2)"),
        ("ok\tfine\nquestion\ta\t\n", "line 2: empty output (column 3)"),
        (b"ok\tfine\nq\t\xff\xfe\n", "line 2: not valid UTF-8"),
        ("", ": no examples (the file is empty)"),
        ("\n\n", ": no examples (the file is empty)"),
    ],
)
def test_crossfit_line_errors(tmp_path, text, expected):
    task_dir = write_tsv_task(tmp_path, "t")
    path = task_dir / "t_16_13_train.tsv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert f"{path}{'' if expected.startswith(':') else ' '}{expected}" in error_of(load_task, tmp_path, "t")


def test_crossfit_missing_dev_file(tmp_path):
    (write_tsv_task(tmp_path, "t") / "t_16_13_dev.tsv").unlink()
    assert "t_16_13_dev.tsv: dev split file not found" in error_of(load_task, tmp_path, "t")


# ------------------------------------------------------------------------------------------
# detection and listing
# ------------------------------------------------------------------------------------------


def test_detect_format_and_list_tasks(tmp_path):
    write_jsonl_task(tmp_path, "b_jsonl")
    write_tsv_task(tmp_path, "a_tsv")
    (tmp_path / "not_a_task").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "tasks.json").write_text("[]")
    assert detect_format(tmp_path, "b_jsonl") == "jsonl"
    assert list_tasks(tmp_path) == ["a_tsv", "b_jsonl"]
    msg = error_of(detect_format, tmp_path, "not_a_task")
    assert "train.jsonl" in msg and "not_a_task_<k>_<seed>_train.tsv" in msg
    assert "closest: b_jsonl" in error_of(detect_format, tmp_path, "b_jsonk")
    assert "data directory not found" in error_of(list_tasks, tmp_path / "nope")


def test_explicit_format_mismatch(tmp_path):
    write_jsonl_task(tmp_path, "t")
    assert "no CrossFit files" in error_of(load_task, tmp_path, "t", fmt="crossfit")
    with pytest.raises(ValueError, match="fmt must be one of"):
        load_task(tmp_path, "t", fmt="csv")


# ------------------------------------------------------------------------------------------
# tasks.json and load_tasks
# ------------------------------------------------------------------------------------------


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


def test_load_tasks_uses_tasks_json(tmp_path):
    write_jsonl_task(tmp_path, "a")
    write_tsv_task(tmp_path, "b")
    records = [{"name": "a", "metric": "EM"}, {"name": "b", "metric": "QA-F1"}]
    (tmp_path / "tasks.json").write_text(json.dumps(records))
    tasks = load_tasks(tmp_path, ["b", "a"])
    assert list(tasks) == ["b", "a"]
    assert tasks["a"].info.metric == "EM" and tasks["b"].info.metric == "QA-F1"
    assert load_task(tmp_path, "a").info.metric == "EM"  # load_task reads tasks.json too
    assert load_task(tmp_path, "a", info=TaskInfo("a", "Rouge-L")).info.metric == "Rouge-L"


def test_load_tasks_task_missing_from_tasks_file_is_an_error(tmp_path):
    write_jsonl_task(tmp_path, "a")
    write_jsonl_task(tmp_path, "b")
    (tmp_path / "tasks.json").write_text(json.dumps([{"name": "a"}]))
    msg = error_of(load_tasks, tmp_path, ["a", "b"])
    assert f"{tmp_path / 'tasks.json'}: no record for task 'b'" in msg and "Fix: add" in msg
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{"name": "a"}, {"name": "b", "metric": "EM"}]))
    assert load_tasks(tmp_path, ["a", "b"], tasks_file=other)["b"].info.metric == "EM"
    assert "tasks file not found" in error_of(load_tasks, tmp_path, ["a"], tasks_file=tmp_path / "x.json")


def test_load_tasks_collects_every_problem(tmp_path):
    write_jsonl_task(tmp_path, "good")
    write_jsonl_task(tmp_path, "broken", {"train": ['{"input": "q", "output": ""}']})
    write_jsonl_task(tmp_path, "empty", {"dev": []})
    (tmp_path / "tasks.json").write_text(json.dumps(
        [{"name": "good"}, {"name": "broken"}, {"name": "empty", "metric": "BLEU"}]
    ))
    msg = error_of(load_tasks, tmp_path, ["good", "broken", "empty", "missing_task", "good"])
    assert "task names listed more than once: good" in msg
    assert "unknown metric 'BLEU'" in msg
    assert "broken/train.jsonl line 1: empty 'output'" in msg
    assert "empty/dev.jsonl: no examples" in msg
    assert "missing_task: no such task directory" in msg
    assert "problems)" in msg


def test_load_tasks_argument_errors(tmp_path):
    assert "no task names given" in error_of(load_tasks, tmp_path, [])
    assert "data directory not found" in error_of(load_tasks, tmp_path / "nope", ["a"])
    write_jsonl_task(tmp_path, "a")
    with pytest.raises(ValueError, match="does not match"):
        load_task(tmp_path, "a", info=TaskInfo("b"))


# ------------------------------------------------------------------------------------------
# task splits
# ------------------------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------------------
# Hugging Face datasets
# ------------------------------------------------------------------------------------------


@pytest.fixture
def hf_dir(tmp_path):
    datasets = pytest.importorskip("datasets")

    def make(split_names=("train", "validation", "test"), **columns):
        cols = columns or {"input": ["q1", "q2"], "output": ["a", "b"]}
        dd = datasets.DatasetDict({s: datasets.Dataset.from_dict(cols) for s in split_names})
        path = tmp_path / "hf"
        dd.save_to_disk(str(path))
        return str(path)

    return make


def test_load_hf_task(hf_dir):
    td = load_hf_task(hf_dir(), "hf_task")
    assert td.info == TaskInfo("hf_task") and [e.target for e in td.dev] == ["a", "b"]
    src = hf_dir(
        ("train", "dev", "test"),
        question=["q1", "q2"], answers=[["a", "A"], ["b"]], choices=[["a", "b"], ["b", "c"]],
    )
    td = load_hf_task(src, "t", input_column="question", output_column="answers", options_column="choices",
                      info=TaskInfo("t", "QA-F1"))
    assert td.train[0] == Example("q1", ("a", "A"), ("a", "b"))  # dev -> 'dev' when no 'validation'
    assert td.info.metric == "QA-F1"
    short = load_hf_task(src, "t", input_column="question", output_column="answers", max_examples=1)
    assert len(short.test) == 1


def test_load_hf_task_classlabel(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    ds = datasets.Dataset.from_dict({"text": ["bad", "good"], "label": [0, 1]}, features=features)
    datasets.DatasetDict({"train": ds, "eval": ds, "test": ds}).save_to_disk(str(tmp_path / "d"))
    td = load_hf_task(str(tmp_path / "d"), "t", input_column="text", output_column="label",
                      splits={"dev": "eval"})
    assert td.train[1] == Example("good", ("pos",), ("neg", "pos"))


def test_load_hf_task_errors(hf_dir, tmp_path):
    src = hf_dir()
    msg = error_of(load_hf_task, src, "t", input_column="text")
    assert "no column 'text'; available: input, output" in msg
    msg = error_of(load_hf_task, src, "t", splits={"test": "heldout"})
    assert "no split 'heldout' for our 'test' split; available: train, validation, test" in msg
    assert "unknown keys ['valid']" in error_of(load_hf_task, src, "t", splits={"valid": "validation"})
    src = hf_dir(input=["q1", ""], output=["a", "b"])
    assert "split 'train' row 1 (0-based): empty 'input'" in error_of(load_hf_task, src, "t")
    src = hf_dir(input=["q1", "q2"], output=[["a"], []])
    assert "row 1 (0-based): 'output' is an empty list" in error_of(load_hf_task, src, "t")
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"input": ["q"], "output": ["a"]}).save_to_disk(str(tmp_path / "single"))
    assert "expected a DatasetDict" in error_of(load_hf_task, str(tmp_path / "single"), "t")
    (tmp_path / "junk").mkdir()
    assert "cannot read it as a saved dataset" in error_of(load_hf_task, str(tmp_path / "junk"), "t")


# ------------------------------------------------------------------------------------------
# demo tasks
# ------------------------------------------------------------------------------------------


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


# ------------------------------------------------------------------------------------------
# layering
# ------------------------------------------------------------------------------------------


def test_data_package_imports_no_heavy_modules():
    code = (
        "import sys, ipt_dist.data; "
        "bad = [m for m in ('torch', 'datasets', 'ray', 'mlflow', 'deepspeed') if m in sys.modules]; "
        "assert not bad, bad"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env={"PYTHONPATH": str(root)})


# ------------------------------------------------------------------------------------------
# real shared data (skipped when ../shared/data is absent)
# ------------------------------------------------------------------------------------------


@pytest.mark.shared_data
@needs_shared
def test_shared_tasks_json_metrics_valid():
    infos = load_task_info(SHARED_TASKS / "tasks.json")
    assert len(infos) > 100 and {i.metric for i in infos.values()} <= set(METRICS)
    raw = json.loads((SHARED_TASKS / "tasks.json").read_text())
    assert all(r["metric"] in METRICS for r in raw)
    assert set(infos) == set(list_tasks(SHARED_TASKS))


@pytest.mark.shared_data
@needs_shared
def test_shared_load_real_tasks():
    names = ["gym__ag_news", "gym__glue-cola", "niv1__task002_quoref_answer_generation"]
    tasks = load_tasks(SHARED_TASKS, names)
    raw = {r["name"]: r for r in json.loads((SHARED_TASKS / "tasks.json").read_text())}
    for name, td in tasks.items():
        assert td.info.metric == raw[name]["metric"]
        assert (len(td.train), len(td.dev), len(td.test)) == (raw[name]["n_train"], raw[name]["n_dev"],
                                                              raw[name]["n_test"])
    ag = tasks["gym__ag_news"]
    assert ag.info.is_classification and ag.train[0].options == ("Business", "Sci/Tech", "Sports", "World")
    assert tasks["gym__glue-cola"].info.metric == "Matthew-Correlation"
    quoref = tasks["niv1__task002_quoref_answer_generation"]
    multi = [e for e in quoref.train + quoref.dev + quoref.test if len(e.outputs) > 1]
    assert multi, "expected examples with references"
    # references repeat the output in shared/data; it must appear once, first
    assert all(e.outputs.count(e.target) == 1 for e in multi)
    assert load_tasks(SHARED_TASKS, names, max_examples=2)["gym__ag_news"].test.__len__() == 2


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


def test_data_dir_that_is_a_file_says_so(tmp_path):
    f = tmp_path / "tasks.jsonl"
    f.write_text("{}")
    with pytest.raises(DataError, match="is a file, not a data directory"):
        list_tasks(f)
