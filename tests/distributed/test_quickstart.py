"""`ipt quickstart` end to end (local Ray, Ray Train + DeepSpeed MSF, sweeps, report), and the
MLflow UI view of its runs through a real `mlflow server` on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.distributed.conftest import free_port, start_mlflow_server, stop_mlflow_server

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

SMALL = [  # small settings: the same stages, fewer steps and tasks
    "data.tasks=[demo_sentiment, demo_topic, demo_parity, demo_pick_animal]",
    "data.unseen_tasks=[demo_sentiment_negated, demo_word_group]",
    "pt.steps=20", "pt.eval_every=10", "ist.steps=20", "ist.eval_every=10",
    "msf.steps=6", "msf.eval_every=3", "msf.checkpoint_every=3",
    "sweep.lrs=[0.3]", "sweep.ipt_init_pt=false",
]


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory, ray_local):
    from ipt_dist.cli import main

    out = tmp_path_factory.mktemp("qs") / "run"
    args = ["quickstart", "--out", str(out)]
    for s in SMALL:
        args += ["--set", s]
    assert main(args) == 0
    return out


def _is_png(path: Path) -> bool:
    import matplotlib.image as mpimg

    data = path.read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n") or len(data) < 2000:
        return False
    img = mpimg.imread(str(path))
    return img.shape[0] > 100 and img.shape[1] > 100 and float(img.std()) > 0.01  # not a blank canvas


def test_quickstart_writes_report_plots_and_mlflow_runs(quickstart_run):
    out = quickstart_run
    report = (out / "report" / "report.md").read_text()
    for name in ("relative_performance.png", "ist_vs_pt.png", "msf_loss.png", "ist_vectors.png"):
        assert _is_png(out / "report" / name), name
        assert f"({name})" in report
    assert "5 IST, unseen tasks" in report and "random" in report
    for d in (2, 8):
        assert (out / f"msf_d{d}" / "msf" / "autoencoder.safetensors").is_file()

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ipt-quickstart")
    runs = client.search_runs([exp.experiment_id], max_results=2000)
    parents = [r for r in runs if r.data.tags.get("ipt.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    msf = [r for r in runs if r.data.tags.get("stage") == "msf"]
    assert len(parents) == 2 and len(msf) == 2
    assert len(children) == sum(1 for _ in open(out / "pt_sweep" / "results.jsonl")) + sum(
        1 for _ in open(out / "ist_sweep" / "results.jsonl"))
    ist_parent = next(p for p in parents if p.data.tags.get("mlflow.runName", "").startswith("ist")
                      or "ist" in p.info.run_name)
    arts = {a.path for a in client.list_artifacts(ist_parent.info.run_id, "report")}
    assert "report/report.md" in arts and "report/relative_performance.png" in arts
    assert all(m.data.metrics for m in msf) and {"lm_loss", "rec_loss"} <= set(msf[0].data.metrics)
    # MLflow 3: one LoggedModel per MSF run (per d), and every child names the draw it used
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    models = mlflow.search_logged_models(experiment_ids=[exp.experiment_id], output_format="list")
    assert sorted((m.params["d"], m.source_run_id) for m in models) == sorted(
        (m.data.params["msf.d"], m.info.run_id) for m in msf)
    assert all(client.get_run(c.info.run_id).inputs.dataset_inputs for c in children[:5])


def test_mlflow_server_shows_the_sweep_runs(quickstart_run, tmp_path):
    """What the MLflow UI shows: parent/child runs, params (task, d, lr, seed), metrics."""
    from mlflow import MlflowClient

    port = free_port()
    proc = start_mlflow_server(quickstart_run / "mlflow.db", port)
    try:
        url = f"http://127.0.0.1:{port}"
        client = MlflowClient(url)
        exp = client.get_experiment_by_name("ipt-quickstart")
        parents = client.search_runs([exp.experiment_id], "tags.`ipt.role` = 'sweep'")
        assert len(parents) == 2
        ist_parent = next(p for p in parents if "ist" in (p.info.run_name or ""))
        assert any(k.endswith("mean_relative") for k in ist_parent.data.metrics)
        children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{ist_parent.info.run_id}'",
                                      max_results=1000)
        ist_children = [c for c in children if c.data.params.get("role") == "ist"]
        assert ist_children
        for c in ist_children:
            assert {"task", "d", "lr", "data_seed"} <= set(c.data.params)
            assert {"best_dev", "test"} <= set(c.data.metrics)
        assert any("relative" in c.data.metrics for c in ist_children)
        # the UI's compare view filters like this: one task, one d
        c0 = ist_children[0]
        same = client.search_runs([exp.experiment_id],
                                  f"params.task = '{c0.data.params['task']}' and params.d = '{c0.data.params['d']}'")
        assert c0.info.run_id in {r.info.run_id for r in same}
    finally:
        stop_mlflow_server(proc)
