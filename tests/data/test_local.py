"""Data directories: JSONL and CrossFit layouts, every data error, detection, load_tasks.

Run: PYTHONPATH=. python -m pytest tests/data -q -p no:cacheprovider
"""

from __future__ import annotations

import json

import pytest

from ipt_dist.data import (
    DataError,
    TaskInfo,
    detect_format,
    list_tasks,
    load_task,
    load_tasks,
)
from tests.data.files import SHARED_TASKS, error_of, needs_shared, write_jsonl_task, write_tsv_task


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
        ("ok\tfine\nno tab here\n", ("line 2: expected 'input<TAB>output', found no tab. "
                                    "Fix: separate input and output with a tab character")),
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


def test_data_dir_that_is_a_file_says_so(tmp_path):
    f = tmp_path / "tasks.jsonl"
    f.write_text("{}")
    with pytest.raises(DataError, match="is a file, not a data directory"):
        list_tasks(f)
