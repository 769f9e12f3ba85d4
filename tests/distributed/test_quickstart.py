"""`ipt quickstart` end to end (local Ray, Ray Train + DeepSpeed MSF, sweeps, report), and the
MLflow UI view of its runs through a real `mlflow server` on loopback, rendered in headless Chromium."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.distributed.conftest import (
    CHROMIUM,
    NO_CHROMIUM,
    free_port,
    page_text,
    render_page,
    run_name_cell_has_expander,
    start_mlflow_server,
    stop_mlflow_server,
)

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


UI_PAGE = 100  # runs per page of the MLflow UI's runs table


def _grow_ist_sweep(db: Path, n_jobs: int) -> None:
    """Add copies of the IST sweep's jobs (same tags, params and final metrics, new job ids) until it
    has `n_jobs`: a full sweep's jobs fill the UI's first page, which this small run's do not."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("ipt-quickstart").experiment_id
    (ist,) = client.search_runs([exp], "tags.`ipt.role` = 'sweep' and tags.`ipt.stage` = 'ist'")
    jobs = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{ist.info.run_id}'", max_results=1000)
    for i in range(n_jobs - len(jobs)):
        src = jobs[i % len(jobs)]
        tags = {k: v for k, v in src.data.tags.items() if not k.startswith("mlflow.") or k == "mlflow.parentRunId"}
        tags["ipt.job_id"] = f"{tags['ipt.job_id']}-copy{i}"
        run = client.create_run(exp, run_name=src.info.run_name, tags=tags).info.run_id
        client.log_batch(run, metrics=[Metric(k, v, 0, 0) for k, v in src.data.metrics.items()],
                         params=[Param(k, v) for k, v in src.data.params.items()])
        client.set_terminated(run)


@pytest.fixture(scope="module")
def quickstart_server(quickstart_run, tmp_path_factory):
    """One real `mlflow server` on loopback (start-up takes seconds to a minute) over a copy of the
    quickstart's store whose IST sweep is grown past the UI's first page."""
    import shutil

    db = tmp_path_factory.mktemp("ui_store") / "mlflow.db"
    shutil.copyfile(quickstart_run / "mlflow.db", db)
    _grow_ist_sweep(db, UI_PAGE + 10)
    port = free_port()
    proc = start_mlflow_server(db, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_mlflow_server(proc)


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
    with (open(out / "pt_sweep" / "results.jsonl") as pt_results,
          open(out / "ist_sweep" / "results.jsonl") as ist_results):
        n_results = sum(1 for _ in pt_results) + sum(1 for _ in ist_results)
    assert len(children) == n_results
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


def test_mlflow_server_shows_the_sweep_runs(quickstart_server):
    """What the MLflow UI's API serves: parent/child runs, params (task, d, lr, seed), metrics."""
    from mlflow import MlflowClient

    client = MlflowClient(quickstart_server)
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


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_mlflow_ui_shows_every_stage_on_the_first_screen(quickstart_server, tmp_path):
    """What a user following the README sees, rendered by a browser from the real UI (the IST sweep's
    jobs fill the newest-first table's first page, as in the full quickstart): the pipeline view
    (the link printed) lists every stage's run with the headline metrics, each sweep expandable; the
    overview lists every stage's run with the headline metrics as columns; a sweep's view nests its
    jobs under it (expandable); the README's filter recipe finds jobs under their sweep."""
    import urllib.parse

    from mlflow import MlflowClient

    from ipt_dist.tracking import OVERVIEW_FILTER, ui_view_path

    client = MlflowClient(quickstart_server)
    exp = client.get_experiment_by_name("ipt-quickstart").experiment_id
    top = client.search_runs([exp], OVERVIEW_FILTER, max_results=1000)
    sweeps = {r.data.tags["ipt.stage"]: r for r in top if r.data.tags.get("ipt.role") == "sweep"}
    assert set(sweeps) == {"pt", "ist"} and len(top) == 4  # PT sweep, MSF d=2 and d=8, IST sweep
    first_page = client.search_runs([exp], max_results=UI_PAGE, order_by=["attributes.start_time DESC"])
    hidden = {r.info.run_id for r in top} - {sweeps["ist"].info.run_id}
    assert not hidden & {r.info.run_id for r in first_page}  # the unfiltered first page shows no other stage
    headline = ["pt/mean_test", "best_dev"] + [f"{s}_d{d}/mean_relative" for d in (2, 8) for s in (
        "msf_seen", "msf_unseen", "ist_seen_same", "ist_seen_new", "ist_unseen")]
    ist, pt = sweeps["ist"], sweeps["pt"]

    dom = render_page(quickstart_server + ui_view_path(exp), tmp_path / "overview")
    text = page_text(dom)
    for run in top:
        assert run.info.run_name in text, f"{run.info.run_name} not on the overview: {text}"
    for column in headline:
        assert column in text, f"column {column} not on the overview"
    assert text[text.index("matching runs") - 1] == str(len(top))
    assert any(t[:5] == repr(ist.data.metrics["ist_unseen_d8/mean_relative"])[:5] for t in text)  # values too

    # the link a user is given: every run oldest first, so each stage's run is on the first page
    # and each sweep expands into its jobs (the IST sweep's 110 jobs reach past that page)
    from ipt_dist.tracking import publish_ui_views

    assert publish_ui_views(client, exp) == ui_view_path(exp, "ipt-pipeline")
    dom = render_page(quickstart_server + ui_view_path(exp, "ipt-pipeline"), tmp_path / "pipeline")
    text = page_text(dom)
    for run in top:
        assert run.info.run_name in text, f"{run.info.run_name} not on the pipeline view: {text}"
    for column in headline + ["task", "relative"]:
        assert column in text, f"column {column} not on the pipeline view"
    for sweep in (pt, ist):
        assert run_name_cell_has_expander(dom, sweep.info.run_id), f"{sweep.info.run_name} cannot be expanded"

    # the oldest sweep: its jobs are never on the first page of the unfiltered table
    dom = render_page(quickstart_server + ui_view_path(exp, "ipt-pt-jobs"), tmp_path / "pt_jobs")
    text = page_text(dom)
    assert pt.info.run_name in text and {"task", "lr", "best_dev", "test"} <= set(text)
    assert run_name_cell_has_expander(dom, pt.info.run_id), "the PT sweep cannot be expanded into its jobs"

    recipe = urllib.parse.quote("params.setting = 'ist_unseen' and params.d = '8'")  # README's recipe at d=8
    dom = render_page(f"{quickstart_server}/#/experiments/{exp}/runs?searchFilter={recipe}", tmp_path / "recipe")
    text = page_text(dom)
    assert ist.info.run_name in text and run_name_cell_has_expander(dom, ist.info.run_id)
    assert int(text[text.index("matching runs") - 1]) > 1
