"""Tasks from Hugging Face datasets (save_to_disk directories).

Run: PYTHONPATH=. python -m pytest tests/data -q -p no:cacheprovider
"""

from __future__ import annotations

import pytest

from ipt_dist.data import (
    Example,
    TaskInfo,
    load_hf_task,
)
from tests.data.files import error_of


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
