"""Task records: the types, the allowed names (one list each) and the record checks.

Run: PYTHONPATH=. python -m pytest tests/data -q -p no:cacheprovider
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ipt_dist.data import METRICS, DataError, Example, TaskData, TaskInfo, load_hf_task, load_task, load_tasks
from tests.data.files import write_jsonl_task


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


def test_data_package_imports_no_heavy_modules():
    code = (
        "import sys, ipt_dist.data; "
        "bad = [m for m in ('torch', 'datasets', 'ray', 'mlflow', 'deepspeed') if m in sys.modules]; "
        "assert not bad, bad"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env={"PYTHONPATH": str(root)})


def test_one_list_of_formats_and_metrics_for_config_loaders_and_scoring():
    """FORMATS is what `data.format` accepts (it lacked "hf", which the config allowed); METRICS is
    the one list tasks.json is checked against and the scorer implements."""
    from ipt_dist import metrics
    from ipt_dist.config import ConfigError, load_config
    from ipt_dist.data.records import FORMATS, LOCAL_FORMATS

    assert FORMATS == ("auto", "jsonl", "crossfit", "hf") and set(LOCAL_FORMATS) < set(FORMATS)
    for fmt in FORMATS:
        assert load_config(None, [f"data.format={fmt}"]).data.format == fmt
    with pytest.raises(ConfigError, match="'tsv' is not one of auto, jsonl, crossfit, hf"):
        load_config(None, ["data.format=tsv"])
    assert metrics.METRICS is METRICS


def test_local_and_hf_loaders_check_and_cap_max_examples_alike(tmp_path):
    """One check (a positive int or None) and one cap per split for both loaders."""
    datasets = pytest.importorskip("datasets")
    write_jsonl_task(tmp_path, "a", {"test": [{"input": f"q{i}", "output": "x"} for i in range(3)]})
    rows = {"input": ["q0", "q1", "q2"], "output": ["x", "y", "z"]}
    datasets.DatasetDict({s: datasets.Dataset.from_dict(rows) for s in ("train", "validation", "test")}
                         ).save_to_disk(str(tmp_path / "hf"))
    for bad in (0, -1, 1.5, "2"):
        with pytest.raises(ValueError, match="max_examples must be a positive integer or None"):
            load_task(tmp_path, "a", max_examples=bad)
        with pytest.raises(ValueError, match="max_examples must be a positive integer or None"):
            load_hf_task(str(tmp_path / "hf"), "h", max_examples=bad)
    assert len(load_task(tmp_path, "a", max_examples=2).test) == 2
    assert len(load_hf_task(str(tmp_path / "hf"), "h", max_examples=2).test) == 2


def test_a_data_directory_loader_refuses_the_hf_format_by_name(tmp_path):
    write_jsonl_task(tmp_path, "a")
    with pytest.raises(ValueError, match="fmt 'hf' names a Hugging Face dataset.*load_hf_task"):
        load_tasks(tmp_path, ["a"], fmt="hf")


def test_the_old_module_path_still_exports_every_name():
    import ipt_dist.data.tasks as old
    from ipt_dist import data

    assert set(old.__all__) == set(data.__all__)
    assert all(getattr(old, n) is getattr(data, n) for n in old.__all__)
