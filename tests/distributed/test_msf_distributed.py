"""Distributed MSF with real Ray Train workers, real DeepSpeed engines (gloo, CPU) and real MLflow.

Runs (about 4-5 minutes on 2 cores in all):
- ZeRO-2, 2 workers, a worker killed after the step-2 checkpoint: Ray Train restarts the group
  (FailureConfig) and the run resumes at step 2; its losses equal a single-process run.
- ZeRO-3, 2 workers (backbone sharded at creation, generation while partitioned): stopped by a
  worker death with max_failures=0, continued with resume=True; losses equal the single-process run.
- msf.lm_reduction sum / mean x ZeRO-2 / ZeRO-3 x grad_accum 1 / 2: MSFWorker.train_step on 2 workers
  equals one process (losses, gradient norm, weights), all 8 cases in one TorchTrainer run (~1 min).
- `ray job submit` of the smoke test against a head node started here.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from tests.distributed.conftest import (
    HIDDEN,
    PROMPT_LEN,
    TRAIN_TASKS,
    free_port,
    msf_overrides,
    write_seeded_prompts,
)

ROOT = Path(__file__).resolve().parents[2]
STEPS = 4
# Per-step loss: 2 ranks vs 1 process differ only in float summation order (padding, all-reduce).
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-5

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


# ----------------------------------------------------------------------------- reference


def single_process_run(cfg, steps: int) -> tuple[list[dict[str, float]], dict[int, dict[str, torch.Tensor]]]:
    """The single-process MSF loop of ipt_dist.stages.msf.run_msf over the same global batches.

    Returns the stats of every step (loss, lm_loss, rec_loss, target_tokens, grad_norm) and the AE
    weights after every step.
    """
    from ipt_dist.artifacts import load_task_prompts
    from ipt_dist.data.sampling import TaskBalancedSampler
    from ipt_dist.modeling.autoencoder import build_autoencoder
    from ipt_dist.modeling.backbone import build_backbone
    from ipt_dist.stages.common import load_tokenized
    from ipt_dist.train.optim import linear_warmup_decay, warmup_steps_for
    from ipt_dist.train.steps import MSFModel, collate_msf, msf_step

    m = cfg.msf
    backbone = build_backbone(cfg.backbone, "cpu")
    prompts = load_task_prompts(cfg.msf.prompts_dir or Path(cfg.output_dir) / "prompts", TRAIN_TASKS,
                                cfg.pt.prompt_len, backbone.hidden_size, backbone.name)
    tok = load_tokenized(cfg, backbone, TRAIN_TASKS)
    data = [tok[t] for t in TRAIN_TASKS]
    ae = build_autoencoder(cfg, backbone.hidden_size)
    model = MSFModel(backbone, ae, prompts, m.alpha, m.lm_reduction)
    opt = torch.optim.AdamW(ae.parameters(), lr=m.lr, eps=m.adam_eps, weight_decay=m.weight_decay)
    warmup = warmup_steps_for(m.steps, m.warmup_ratio)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: linear_warmup_decay(s, m.steps, warmup))
    sampler = TaskBalancedSampler([len(d.train) for d in data], m.batch_size, temperature=m.temperature,
                                  seed=m.seed)  # world_size=1: the same global batches as 2 ranks together
    rows, states = [], {}
    for step in range(1, steps + 1):
        backbone.set_train_mode(True)
        stats = msf_step(model, opt, sched, collate_msf(backbone, data, sampler.next_batch()), m.grad_clip)
        rows.append({k: float(v) for k, v in stats.items()})
        states[step] = {k: v.detach().clone() for k, v in ae.state_dict().items()}
    return rows, states


def history(out: Path) -> list[dict]:
    from ipt_dist.artifacts import read_jsonl

    return read_jsonl(out / "msf_dist" / "history.jsonl")


def final_losses(rows: list[dict]) -> list[float]:
    """The loss of each step as last recorded (a step replayed after a restart overrides the first try)."""
    by_step = {r["step"]: r["loss"] for r in rows}
    return [by_step[s] for s in sorted(by_step)]


def assert_matches_reference(out: Path, summary: dict, reference) -> None:
    from ipt_dist.artifacts import load_msf_checkpoint

    ref_rows, ref_states = reference
    ref_losses = [r["loss"] for r in ref_rows]
    got = final_losses(history(out))
    assert len(got) == STEPS
    for step, (a, b) in enumerate(zip(got, ref_losses, strict=True), start=1):
        assert math.isclose(a, b, rel_tol=LOSS_RTOL), f"step {step}: distributed {a} vs single process {b}"
    # every logged column, as read at the flushes (one all-reduce over several steps' totals)
    last = {r["step"]: r for r in history(out)}
    for step, ref in enumerate(ref_rows, start=1):
        for k in ("lm_loss", "rec_loss", "target_tokens", "grad_norm"):
            assert math.isclose(last[step][k], ref[k], rel_tol=LOSS_RTOL), (step, k, last[step][k], ref[k])
    # The exported (best mean-dev) autoencoder equals the single-process weights at that step.
    ae, meta = load_msf_checkpoint(out / "msf")
    assert meta["step"] == summary["best_step"]
    for k, v in ae.state_dict().items():
        torch.testing.assert_close(v, ref_states[meta["step"]][k], atol=WEIGHT_ATOL, rtol=0)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, demo_dir, tiny_t5_dir):
    from ipt_dist.config import load_config

    out = tmp_path_factory.mktemp("msf_ref")
    write_seeded_prompts(out / "prompts", backbone=tiny_t5_dir)
    cfg = load_config(None, msf_overrides(out, demo_dir, backbone=tiny_t5_dir, steps=STEPS))
    return single_process_run(cfg, STEPS)


# ----------------------------------------------------------------------------- ZeRO-2 + restart


@pytest.fixture(scope="module")
def zero2_run(ray_local, tmp_path_factory, demo_dir, tiny_t5_dir):
    """ZeRO-2 run whose last worker dies before step 4, after the step-2 checkpoint (max_failures=1)."""
    from ipt_dist.config import load_config
    from ipt_dist.distributed.msf import run_distributed_msf

    out = tmp_path_factory.mktemp("msf_zero2")
    write_seeded_prompts(out / "prompts", backbone=tiny_t5_dir)
    cfg = load_config(None, msf_overrides(out, demo_dir, backbone=tiny_t5_dir,
                                          ds_config="ds_configs/zero2.json", steps=STEPS)
                      + ["distributed.max_failures=1", "msf.log_every=1"])  # every step's row lands before the kill
    t0 = time.time()
    summary = run_distributed_msf(cfg, crash_at_step=4)
    print(f"ZeRO-2 run with one restart: {time.time() - t0:.1f} s")
    return out, summary


def test_zero2_two_workers_match_single_process(zero2_run, reference, demo_dir, tiny_t5_dir):
    from ipt_dist.artifacts import read_msf_meta
    from ipt_dist.config import load_config
    from ipt_dist.provenance import msf_provenance
    from ipt_dist.stages.common import load_raw

    out, summary = zero2_run
    info = json.loads((out / "msf_dist" / "backbone_rank0.json").read_text())
    assert info["backbone_parameters_on_rank"] == info["backbone_parameters"]  # replicated
    assert_matches_reference(out, summary, reference)
    # msf.json records its provenance with the same helper as single-process MSF
    cfg = load_config(None, msf_overrides(out, demo_dir, backbone=tiny_t5_dir, steps=STEPS))
    expected = msf_provenance(cfg, load_raw(cfg, TRAIN_TASKS), None, out / "prompts")
    assert read_msf_meta(out / "msf")["provenance"] == expected


def test_prompts_of_another_draw_are_refused_before_any_worker_starts(tmp_path, demo_dir):
    from dataclasses import replace

    from ipt_dist.artifacts import prompt_path, save_prompt
    from ipt_dist.config import load_config
    from ipt_dist.distributed.msf import MSFInputError, check_inputs
    from ipt_dist.provenance import prompt_provenance
    from ipt_dist.stages.common import load_raw

    cfg = load_config(None, msf_overrides(tmp_path, demo_dir) + ["data.train_size=6", "data.data_seed=42"])
    cfg = replace(cfg, msf=replace(cfg.msf, prompts_dir=str(tmp_path / "prompts")))
    write_seeded_prompts(tmp_path / "prompts")
    assert check_inputs(cfg)["provenance"]["data"]["data.data_seed"] == 42  # no provenance in the files: unchecked
    task = load_raw(cfg, ["demo_topic"], 13)["demo_topic"]
    save_prompt(prompt_path(tmp_path / "prompts", "demo_topic"), torch.zeros(PROMPT_LEN, HIDDEN),
                backbone="tiny-t5", provenance=prompt_provenance(cfg, task, 13))
    with pytest.raises(MSFInputError, match="demo_topic: data.data_seed: prompt 13 vs config 42"):
        check_inputs(cfg)


def final_ae_state(summary: dict) -> dict[str, torch.Tensor]:
    """The AE weights of the run's last checkpoint (DeepSpeed's module states; frozen backbone excluded)."""
    [f] = Path(summary["ray_checkpoint"]).glob(f"step{STEPS}/mp_rank_00_model_states.pt")
    return torch.load(f, map_location="cpu", weights_only=False)["module"]


def test_killed_worker_resumes_from_latest_checkpoint(zero2_run, reference):
    out, summary = zero2_run
    assert (out / "msf_dist" / "crash_injected").is_file(), "the worker was never killed"
    rows = history(out)
    # first attempt: steps 1-3 (checkpoint at 2, killed before 4); second attempt: resumed at step 2
    assert [(r["step"], r["resumed_from"]) for r in rows] == [(1, 0), (2, 0), (3, 0), (3, 2), (4, 2)]
    # The replayed step 3 is bit-for-bit the first one: weights, Adam state, scheduler and sampler restored.
    first, replay = rows[2], rows[3]
    assert replay["loss"] == pytest.approx(first["loss"], rel=1e-9)
    assert replay["lr"] == first["lr"]
    assert summary["steps"] == STEPS
    assert summary["ray_checkpoint"].endswith(f"checkpoint_step{STEPS:08d}")
    # The final AE of the killed-and-restarted run equals the uninterrupted run's (same seed).
    final, ref_final = final_ae_state(summary), reference[1][STEPS]
    for k, v in ref_final.items():
        [key] = [m for m in final if m == k or m.endswith("." + k)]
        torch.testing.assert_close(final[key].float(), v, atol=WEIGHT_ATOL, rtol=0)


# ----------------------------------------------------------------------------- ZeRO-3 + --resume


@pytest.fixture(scope="module")
def zero3_run(ray_local, tmp_path_factory, demo_dir, tiny_t5_dir):
    """ZeRO-3 run stopped by a worker death (max_failures=0), then continued with resume=True. The
    default msf.log_every (10 > STEPS): metrics are read at the eval / checkpoint steps 2 and 4 only."""
    from ipt_dist.config import load_config
    from ipt_dist.distributed.msf import DistributedMSFError, run_distributed_msf

    out = tmp_path_factory.mktemp("msf_zero3")
    write_seeded_prompts(out / "prompts", backbone=tiny_t5_dir)
    cfg = load_config(None, msf_overrides(out, demo_dir, backbone=tiny_t5_dir,
                                          ds_config="ds_configs/zero3.json", steps=STEPS, tracking=True)
                      + ["distributed.max_failures=0"])
    t0 = time.time()
    with pytest.raises(DistributedMSFError, match="--resume") as stopped:
        run_distributed_msf(cfg, crash_at_step=4)
    record = json.loads((out / "msf_dist" / "run.json").read_text())
    stopped_state = resume_checks(cfg)
    summary = run_distributed_msf(cfg, resume=True)
    print(f"ZeRO-3 run stopped + resumed: {time.time() - t0:.1f} s")
    return out, summary, record, str(stopped.value), stopped_state, resume_checks(cfg)


def resume_checks(cfg) -> dict:
    """What the pipeline would do with the run in cfg's output_dir now, and what a --resume with a
    changed lr says (refused before Ray is touched)."""
    from dataclasses import replace

    from ipt_dist.distributed.msf import MSFInputError, run_distributed_msf
    from ipt_dist.distributed.msf_inputs import resumable_run

    try:
        run_distributed_msf(replace(cfg, msf=replace(cfg.msf, lr=cfg.msf.lr * 2)), resume=True)
        changed = None
    except MSFInputError as exc:
        changed = str(exc)
    return {"resumable": resumable_run(cfg), "changed_lr": changed}


def test_zero3_two_workers_match_single_process(zero3_run, reference):
    out, summary, *_ = zero3_run
    assert summary["zero_stage"] == 3
    # The frozen backbone was created sharded: rank 0 holds about half of it.
    info = json.loads((out / "msf_dist" / "backbone_rank0.json").read_text())
    assert info["partitioned_at_creation"]
    assert info["backbone_parameters_on_rank"] <= 0.55 * info["backbone_parameters"]
    assert_matches_reference(out, summary, reference)


def test_stopped_run_continues_with_resume(zero3_run):
    from mlflow import MlflowClient

    out, summary, record, _error, stopped, finished = zero3_run
    # the pipeline continues a stopped run with a committed checkpoint (step 2), not a finished one
    assert stopped["resumable"] and not finished["resumable"]
    assert record["inputs"]["msf.steps"] == STEPS
    # a --resume with other inputs is refused, naming the field, before Ray Train runs anything
    assert "started from other inputs" in stopped["changed_lr"] and "msf.lr:" in stopped["changed_lr"]
    assert "Fix: continue it with the config it started with" in stopped["changed_lr"]
    rows = history(out)
    # Step 3 of the first attempt was still on the device when the worker died (read at step 4's
    # flush, which never came); it is replayed from the step-2 checkpoint, as every later step.
    assert [(r["step"], r["resumed_from"]) for r in rows] == [(1, 0), (2, 0), (3, 2), (4, 2)]
    # one read per flush: the steps of a flush share the interval's mean step time
    assert rows[0]["step_time"] == rows[1]["step_time"] and rows[2]["step_time"] == rows[3]["step_time"]
    assert summary["steps"] == STEPS
    assert summary["ray_run"] == record["ray_run"]
    # the same MLflow run continues, and ends FINISHED
    assert summary["mlflow_run_id"] == record["mlflow_run_id"]
    run = MlflowClient(record["tracking_uri"]).get_run(record["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["resumed"] == "true"
    # dev scores were produced by generation under ZeRO-3 (parameters partitioned)
    assert all(f"dev/{t}" in run.data.metrics for t in TRAIN_TASKS)
    # the driver logged the exported autoencoder as the run's LoggedModel, once (not again on resume),
    # and the training tasks' draws as the run's dataset inputs
    import mlflow

    mlflow.set_tracking_uri(record["tracking_uri"])
    [model] = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list",
                                          filter_string=f"source_run_id = '{run.info.run_id}'")
    meta = json.loads((out / "msf" / "msf.json").read_text())
    assert model.params["d"] == str(meta["d"]) and model.params["tasks"] == ",".join(TRAIN_TASKS)
    assert model.params["backbone"] == meta["backbone"] and str(model.status) == "READY"
    arts = MlflowClient(record["tracking_uri"]).list_logged_model_artifacts(model.model_id)
    assert sorted(a.path for a in arts) == ["autoencoder.safetensors", "msf.json"]
    digests = meta["provenance"]["data"]["train_digest"]
    inputs = run.inputs.dataset_inputs
    assert {(d.dataset.name.split("@")[0], d.dataset.digest) for d in inputs} == set(digests.items())


# ----------------------------------------------------------------------------- loss reduction x ZeRO x accum

EQ_STEPS = 3
# (lm_reduction, ds_config, grad_accum); ZeRO-2 first: a ZeRO-3 worker's HfDeepSpeedConfig must not be
# alive while a later ZeRO-2 worker builds its backbone (transformers would build it under zero.Init).
EQ_CASES = [(red, f"ds_configs/zero{z}.json", acc) for z in (2, 3) for red in ("sum", "mean") for acc in (1, 2)]


def _case_name(case) -> str:
    red, ds, acc = case
    return f"{red}-{Path(ds).stem}-accum{acc}"


@pytest.fixture(scope="module")
def reduction_runs(ray_local, tmp_path_factory, demo_dir, tiny_t5_dir):
    """Every EQ_CASES configuration for EQ_STEPS steps through MSFWorker.train_step (the production
    step: DeepSpeed engine, gradient averaging over 2 ranks and accumulation), all inside ONE
    TorchTrainer run to keep the cost of a Ray worker group to one. Rank 0 saves each case's step
    rows and full fp32 AE weights to `<dir>/<case>.pt`."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from ipt_dist.config import config_to_dict, load_config
    from ipt_dist.distributed.deepspeed_config import build_ds_config
    from ipt_dist.distributed.msf import absolutize

    out = tmp_path_factory.mktemp("msf_reductions")
    write_seeded_prompts(out / "prompts", backbone=tiny_t5_dir)
    runs = {}
    for case in EQ_CASES:
        red, ds, acc = case
        cfg = absolutize(load_config(None, msf_overrides(out, demo_dir, backbone=tiny_t5_dir, ds_config=ds,
                                                         steps=STEPS)
                                     + [f"msf.lm_reduction={red}", f"distributed.grad_accum={acc}"]))
        runs[_case_name(case)] = {"cfg": config_to_dict(cfg), "ds_config": build_ds_config(cfg),
                                  "run": {"name": _case_name(case), "dir": str(out), "mlflow_run_id": None,
                                          "crash_at_step": None}}

    def train_func(config: dict) -> None:  # local: cloudpickle ships it by value to the workers
        import gc

        import torch as th

        from ipt_dist.distributed.msf import MSFWorker, full_fp32_state

        for name, sub in config["runs"].items():
            worker = MSFWorker(sub)
            assert worker.sizes.accum == sub["cfg"]["distributed"]["grad_accum"]
            rows = [worker.train_step() for _ in range(config["steps"])]
            state = full_fp32_state(worker.ae)  # collective
            if worker.rank == 0:
                th.save({"rows": rows, "state": state}, f"{config['dir']}/{name}.pt")
            del worker
            gc.collect()

    t0 = time.time()
    TorchTrainer(train_func, train_loop_config={"runs": runs, "steps": EQ_STEPS, "dir": str(out)},
                 scaling_config=ray.train.ScalingConfig(num_workers=2, use_gpu=False),
                 run_config=ray.train.RunConfig(name=f"reductions-{out.name}", storage_path=str(out / "ray"),
                                                worker_runtime_env={"env_vars": {"DS_ACCELERATOR": "cpu"}})).fit()
    print(f"{len(EQ_CASES)} reduction / ZeRO / accum cases in one TorchTrainer run: {time.time() - t0:.1f} s")
    return {name: torch.load(out / f"{name}.pt", weights_only=False) for name in runs}


@pytest.fixture(scope="module")
def reference_mean(tmp_path_factory, demo_dir, tiny_t5_dir):
    from ipt_dist.config import load_config

    out = tmp_path_factory.mktemp("msf_ref_mean")
    write_seeded_prompts(out / "prompts", backbone=tiny_t5_dir)
    cfg = load_config(None, msf_overrides(out, demo_dir, backbone=tiny_t5_dir, steps=STEPS)
                      + ["msf.lm_reduction=mean"])
    return single_process_run(cfg, EQ_STEPS)


@pytest.mark.parametrize("case", EQ_CASES, ids=_case_name)
def test_two_workers_match_one_process_for_each_reduction_zero_stage_and_accum(case, reduction_runs, reference,
                                                                              reference_mean):
    """Gradient of the global batch == the single-process gradient: its norm (before clipping) and the
    resulting AE weights; logged loss (the objective) and token-mean lm_loss equal too."""
    red = case[0]
    ref_rows, ref_states = reference if red == "sum" else reference_mean
    got = reduction_runs[_case_name(case)]
    for step, (row, ref) in enumerate(zip(got["rows"], ref_rows, strict=False), start=1):
        for key in ("loss", "lm_loss", "rec_loss", "target_tokens", "grad_norm"):
            assert math.isclose(row[key], ref[key], rel_tol=LOSS_RTOL), \
                f"step {step} {key}: 2 workers {row[key]} vs 1 process {ref[key]}"
    assert len(got["rows"]) == EQ_STEPS
    if red == "sum":  # the objective really is the token sum: loss = lm_loss * tokens + alpha * rec
        r = got["rows"][0]
        assert math.isclose(r["loss"], r["lm_loss"] * r["target_tokens"] + 2.0 * r["rec_loss"], rel_tol=1e-9)
    for k, v in ref_states[EQ_STEPS].items():
        torch.testing.assert_close(got["state"][k], v, atol=WEIGHT_ATOL, rtol=0)


def test_sum_and_mean_train_differently(reference, reference_mean):
    """The reduction changes the LM / reconstruction balance, hence the weights (the cases above can tell)."""
    diff = max((reference[1][EQ_STEPS][k] - v).abs().max().item() for k, v in reference_mean[1][EQ_STEPS].items())
    assert diff > 100 * WEIGHT_ATOL


def test_resume_without_a_previous_run_is_a_clear_error(tmp_path, demo_dir):
    from ipt_dist.config import load_config
    from ipt_dist.distributed.msf import MSFInputError, run_distributed_msf

    write_seeded_prompts(tmp_path / "prompts")
    cfg = load_config(None, msf_overrides(tmp_path, demo_dir))
    with pytest.raises(MSFInputError, match="no run to continue"):
        run_distributed_msf(cfg, resume=True)


@pytest.mark.parametrize("extra, match", [
    (["distributed.num_workers=8"], ("8 workers (distributed.num_workers) x 1 CPU / 0 GPU each need 8 CPUs / 0 GPUs, "
                                     "the Ray cluster has 2 CPUs / 0 GPUs")),
    (["distributed.use_gpu=true"], "need 2 CPUs / 2 GPUs, the Ray cluster has 2 CPUs / 0 GPUs"),
    (["distributed.resources_per_worker={CPU: 3}"], "x 3 CPU / 0 GPU each need 6 CPUs"),
])
def test_more_workers_than_the_cluster_has_is_a_bounded_wait_then_a_clear_error(ray_local, tmp_path, demo_dir,
                                                                                extra, match):
    """Ray Train would wait forever for a placement group that cannot be placed: we wait
    distributed.resource_wait_s, then fail before any MLflow run or worker exists."""
    from ipt_dist.config import load_config
    from ipt_dist.distributed.msf import DistributedMSFError, run_distributed_msf

    write_seeded_prompts(tmp_path / "prompts")
    cfg = load_config(None, msf_overrides(tmp_path, demo_dir, tracking=True) + extra + [
        "distributed.resource_wait_s=2", f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db"])
    t0 = time.time()
    with pytest.raises(DistributedMSFError) as err:
        run_distributed_msf(cfg)
    assert time.time() - t0 < 30
    msg = str(err.value)
    assert match in msg, msg
    assert "waited 2 s" in msg and "Fix: lower distributed.num_workers" in msg
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "ray_results").exists()


# ----------------------------------------------------------------------------- checks before workers start


def test_every_input_problem_is_listed_before_any_worker_starts(tmp_path, demo_dir):
    """Missing prompt, wrong prompt shape and a broken batch invariant: one error, all listed."""
    import ray

    from ipt_dist.artifacts import prompt_path, save_prompt
    from ipt_dist.config import load_config
    from ipt_dist.distributed.msf import MSFInputError, run_distributed_msf

    write_seeded_prompts(tmp_path / "prompts", TRAIN_TASKS[:1])  # demo_topic / demo_parity: no prompt file
    save_prompt(prompt_path(tmp_path / "prompts", "demo_topic"), torch.zeros(4, 32), backbone="tiny-t5")
    cfg = load_config(None, msf_overrides(tmp_path, demo_dir)
                      + ["data.tasks=[demo_sentiment, demo_topic, demo_parity]", "distributed.num_workers=3"])
    was_running = ray.is_initialized()
    with pytest.raises(MSFInputError) as err:
        run_distributed_msf(cfg)
    msg = str(err.value)
    assert "demo_parity.safetensors does not exist" in msg
    assert "prompt shape (4, 32) does not match" in msg and "H=64" in msg
    assert "msf.batch_size (8) must be divisible" in msg and "distributed.num_workers (3)" in msg
    assert ray.is_initialized() == was_running, "Ray must not start when the inputs are bad"

    cfg = load_config(None, msf_overrides(tmp_path, demo_dir) + ["data.tasks=[demo_sentiment, no_such_task]"])
    with pytest.raises(MSFInputError, match="no_such_task"):
        run_distributed_msf(cfg)


# ----------------------------------------------------------------------------- ray job submit


class LocalHead:
    """A Ray head node of our own (own temp dir, own ports), stopped without `ray stop`.

    `ray stop` cannot pick a cluster: it stops every Ray on the machine. `ray start` runs here in
    a new session, and every process of this head (gcs_server, raylet, dashboard, agents, workers)
    inherits that session id, so exactly those processes, plus their descendants (a job's driver
    starts its own session) and anything naming our temp dir, are terminated by pid.
    """

    PORT_FLAGS = ("port", "ray-client-server-port", "dashboard-agent-listen-port",
                  "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port",
                  "node-manager-port", "object-manager-port")

    def __init__(self, temp_dir: Path) -> None:
        self.temp_dir = temp_dir
        self.dashboard_port = free_port()
        self.session: int | None = None
        bindir = str(Path(sys.executable).parent)
        # The job's `python` is the one on the PATH of the shell that ran `ray start`.
        self.env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
                    "RAY_AUTH_MODE": "token", "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0",
                    "TOKENIZERS_PARALLELISM": "false"}
        self.env.pop("RAY_ADDRESS", None)
        self.ray = str(Path(bindir) / "ray")

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self) -> None:
        # Every port is a free one: the defaults (6379, 8265, 52365, 10001, ...) may belong to
        # another Ray on this machine, and a head whose agent cannot bind refuses jobs.
        cmd = [self.ray, "start", "--head", f"--temp-dir={self.temp_dir}", "--node-ip-address=127.0.0.1",
               f"--dashboard-port={self.dashboard_port}", "--dashboard-host=127.0.0.1",
               "--include-dashboard=true", "--num-cpus=2", "--disable-usage-stats",
               *[f"--{flag}={free_port()}" for flag in self.PORT_FLAGS]]
        proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        self.session = proc.pid  # the session leader's pid is the session id
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, f"ray start failed:\n{out}"

    def job(self, command: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """`ray job COMMAND --address URL ARGS` (ARGS may end with `-- entrypoint`), from the repo root."""
        return subprocess.run([self.ray, "job", command, "--address", self.address, *args], env=self.env,
                              cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)

    def job_status(self, submission_id: str) -> str:
        """The job's JobStatus value (e.g. "SUCCEEDED") from the job server, asked with token auth."""
        code = ("import sys; from ray.job_submission import JobSubmissionClient; "
                "print(JobSubmissionClient(sys.argv[1]).get_job_status(sys.argv[2]).value)")
        proc = subprocess.run([sys.executable, "-c", code, self.address, submission_id], env=self.env,
                              capture_output=True, text=True, timeout=120, check=False)
        lines = proc.stdout.strip().splitlines()
        return lines[-1] if lines else f"unknown ({proc.stderr[-2000:]})"

    def processes(self) -> list:
        import psutil

        key = str(self.temp_dir)
        found: dict[int, psutil.Process] = {}
        for p in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error, OSError):
                if os.getsid(p.pid) == self.session or any(key in arg for arg in p.info["cmdline"] or []):
                    found[p.pid] = p
        for p in list(found.values()):
            with contextlib.suppress(psutil.Error):
                found.update({c.pid: c for c in p.children(recursive=True)})
        found.pop(os.getpid(), None)
        return list(found.values())

    def stop(self) -> None:
        import psutil

        if self.session is None:
            return
        procs = self.processes()
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.terminate()
        _, alive = psutil.wait_procs(procs, timeout=15)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(alive, timeout=5)


def test_ray_job_submit_smoke_test(tmp_path):
    pytest.importorskip("psutil")
    from mlflow import MlflowClient

    temp_dir = Path(tempfile.mkdtemp(prefix="iptjob_", dir="/tmp"))  # short: Ray socket paths
    out = tmp_path / "smoke"  # absolute: the job runs in a temporary copy of the working dir
    head = LocalHead(temp_dir)
    try:
        head.start()
        sub_id = f"msf-smoke-{os.getpid()}"
        t0 = time.time()
        submit = head.job("submit", "--submission-id", sub_id, "--working-dir", ".", "--",
                          "python", "ray_jobs/msf.py", "--smoke-test", "--out", str(out))
        print(f"ray job submit: {time.time() - t0:.1f} s")
        status = head.job_status(sub_id)
        assert status == "SUCCEEDED", (f"job status {status}\n--- job output ---\n{submit.stdout[-6000:]}\n"
                                       f"{submit.stderr[-3000:]}")
    finally:
        head.stop()
        leftover = head.processes()
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not leftover, f"processes of the test's head node survived: {[p.pid for p in leftover]}"

    assert (out / "msf" / "msf.json").is_file() and (out / "msf" / "autoencoder.safetensors").is_file()
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ipt-msf-smoke")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, "exactly one MLflow run per training run"
    run = runs[0]
    assert run.info.status == "FINISHED"
    metrics = set(run.data.metrics)
    expected = {"loss", "lm_loss", "rec_loss", "lr", "samples_per_second", "tokens_per_second", "dev_mean"}
    assert expected <= metrics, f"missing metrics {expected - metrics}"
    assert {"dev/demo_sentiment", "dev/demo_topic", "dev/demo_parity", "dev/demo_copy_first"} <= metrics
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 6  # one per step
    assert run.data.params["msf.d"] == "4" and run.data.params["distributed.num_workers"] == "2"
    tags = run.data.tags
    assert (tags["backbone"], tags["d"], tags["split"], tags["stage"]) == ("tiny-t5", "4", "custom", "msf")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"msf", "config"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "config")} == {"config/ds_config.json",
                                                                                   "config/msf_config.yaml"}
    assert "msf/autoencoder.safetensors" in {a.path for a in client.list_artifacts(run.info.run_id, "msf")}
