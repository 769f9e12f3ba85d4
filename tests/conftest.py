"""Shared fixtures: tiny configs on the project's own demo tasks; no downloads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tasks"


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    from ipt_dist.data.tasks import write_demo_tasks

    d = tmp_path_factory.mktemp("demo_data")
    write_demo_tasks(d)
    return d


def tiny_overrides(out: Path, data_dir: Path, backbone: str = "tiny-t5") -> list[str]:
    return [
        f"output_dir={out}",
        f"data.data_dir={data_dir}",
        f"backbone.name_or_path={backbone}",
        "backbone.dropout=false",
        "backbone.num_beams=1",
        "backbone.max_new_tokens=6",
        "backbone.max_input_len=32",
        "backbone.max_target_len=8",
        "backbone.label_smoothing=0.0",
        "data.max_examples=16",
        "pt.prompt_len=4",
        "pt.lr=0.3",
        "pt.batch_size=4",
        "pt.steps=8",
        "pt.eval_every=4",
        "pt.grad_clip=1.0",
        "msf.d=4",
        "msf.mid_dim=32",
        "msf.alpha=1.0",
        "msf.lr=0.003",
        "msf.batch_size=8",
        "msf.steps=8",
        "msf.eval_every=4",
        "msf.grad_clip=1.0",
        "ist.lr=0.1",
        "ist.batch_size=4",
        "ist.steps=8",
        "ist.eval_every=4",
        "ist.grad_clip=1.0",
        "tracking.enabled=false",
    ]


@pytest.fixture
def tiny_cfg(tmp_path, demo_dir):
    from ipt_dist.config import load_config

    return load_config(None, tiny_overrides(tmp_path / "run", demo_dir)
                       + ["data.tasks=[demo_sentiment, demo_topic, demo_parity]", "data.unseen_tasks=[demo_copy_first]"])


@pytest.fixture(autouse=True)
def _no_leaked_tracking_uri():
    """mlflow.set_tracking_uri also sets $MLFLOW_TRACKING_URI, which every later subprocess (a Ray
    head started by a test, a submitted job) would inherit and log to: restore it after each test."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


# The sweep tests' stage-0 inputs (session-scoped: shared by tests/sweep and tests/distributed).
from tests.sweep.fixtures import stage0  # noqa: F401
