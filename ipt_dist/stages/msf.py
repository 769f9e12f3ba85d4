"""Stage 1, single process: train the prompt autoencoder over the stage-0 prompts.

    ipt msf --config configs/demo.yaml

The distributed version (Ray Train + DeepSpeed) is `ipt_dist.distributed.msf_worker` / `msf_driver`;
both use the same `MSFModel`, sampler, evaluation and keep-best rule (`ipt_dist.train.best`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from ipt_dist.artifacts import (
    ArtifactError,
    append_jsonl,
    atomic_write_bytes,
    ensure_writable_dir,
    load_task_prompts,
    save_msf_checkpoint,
)
from ipt_dist.config import ConfigError, IPTConfig
from ipt_dist.data.batching import TokenizedTask
from ipt_dist.data.sampling import TaskBalancedSampler
from ipt_dist.data.selection import load_raw, resolve_tasks, tokenize_raw
from ipt_dist.modeling.autoencoder import build_autoencoder
from ipt_dist.modeling.backbone import Backbone, build_backbone, resolve_auto_dtype
from ipt_dist.paths import msf_prompts_dir, stage_dir
from ipt_dist.provenance import check_msf_prompts, msf_provenance
from ipt_dist.rerun import claim_stage_dir, msf_inputs, recorded_inputs
from ipt_dist.stages.common import pick_device
from ipt_dist.testing.faults import maybe_crash_msf
from ipt_dist.tracking import NullTracker, log_msf_model, msf_datasets
from ipt_dist.train.best import BestTracker, dev_mean
from ipt_dist.train.optim import linear_warmup_decay, warmup_steps_for
from ipt_dist.train.rows import to_device_async
from ipt_dist.train.steplog import StepLog
from ipt_dist.train.steps import MSFModel, collate_msf, evaluate_reconstructed, msf_step

# Re-exported for one release: build_autoencoder moved to ipt_dist.modeling.autoencoder, collate_msf and
# evaluate_reconstructed to ipt_dist.train.steps.
__all__ = ["build_autoencoder", "collate_msf", "evaluate_reconstructed", "msf_prompts_dir", "run_msf", "train_msf"]

log = logging.getLogger(__name__)


def train_msf(cfg: IPTConfig, backbone: Backbone, prompts: torch.Tensor, data: list[TokenizedTask],
              tasks: list[str], out: Path, provenance: dict | None = None, tracker=None,
              resume: dict | None = None) -> BestTracker:
    """The single-process MSF loop: train the autoencoder over `data` (one entry per task, `prompts`
    (T, L, H) their stage-0 prompts), evaluate dev every `msf.eval_every` steps and save the best
    mean-dev checkpoint to `out` (`train.best`: a NaN task is left out of the mean). Appends every
    step's metrics to `out/history.jsonl`. Returns the best score and step.
    """
    tracker = tracker or NullTracker()
    device = backbone.device
    H = backbone.hidden_size
    ae = build_autoencoder(cfg, H).to(device)
    model = MSFModel(backbone, ae, prompts, cfg.msf.alpha, cfg.msf.lm_reduction)
    m = cfg.msf
    opt = torch.optim.AdamW(ae.parameters(), lr=m.lr, eps=m.adam_eps, weight_decay=m.weight_decay)
    warmup = warmup_steps_for(m.steps, m.warmup_ratio)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: linear_warmup_decay(s, m.steps, warmup))
    sampler = TaskBalancedSampler([len(d.train) for d in data], m.batch_size, temperature=m.temperature,
                                  seed=m.seed)
    history = out / "history.jsonl"
    best = BestTracker()
    start, before = _resume(out, resume, ae, opt, sched, sampler, best) if resume else (0, [])
    if start:  # this (new) tracking run gets the kept steps too, so that it shows the whole training
        tracker.set_tags({"resumed_from_step": start})
        for r in before:  # a NaN / inf was written to history.jsonl as null
            tracker.log_metrics({k: v for k, v in r.items() if k != "step" and v is not None}, step=r["step"])
    from tqdm.auto import tqdm

    steplog = StepLog()  # every step's stats stay on the device until a log / eval step (msf.log_every)
    for step in tqdm(range(start, m.steps), desc="msf", leave=False, initial=start, total=m.steps):
        t0 = time.perf_counter()
        backbone.set_train_mode(True)
        lr = sched.get_last_lr()[0]  # the rate this step applies (msf_step advances the scheduler)
        batch = {k: to_device_async(v, device) for k, v in collate_msf(backbone, data, sampler.next_batch()).items()}
        stats = msf_step(model, opt, sched, batch, m.grad_clip)
        done = step + 1
        steplog.add(done, stats, {"lr": lr}, started=t0)
        maybe_crash_msf(done)
        evaluate = done % m.eval_every == 0 or done == m.steps
        checkpoint = (evaluate or done % m.checkpoint_every == 0) and done < m.steps
        if not (evaluate or checkpoint or done % m.log_every == 0):
            continue
        # one host read; step_time: the mean over the flushed steps
        rows = [{"step": f.step, **f.values, **f.host, "step_time": f.step_time} for f in steplog.flush()]
        row = rows[-1]
        if evaluate:
            scores = evaluate_reconstructed(backbone, ae, prompts, data, "dev", cfg.backbone.eval_batch_size,
                                            m.eval_max_examples)
            row["dev_mean"] = dev_mean(scores, tasks)  # NaN tasks left out (train.best)
            row.update({f"dev/{t}": s for t, s in zip(tasks, scores)})
            if best.update(row["dev_mean"], done):
                save_msf_checkpoint(out, ae, {"backbone": backbone.name, "tasks": tasks, "alpha": m.alpha,
                                              "lm_reduction": m.lm_reduction, "best_dev": best.best, "step": done,
                                              "temperature": m.temperature, "provenance": provenance})
            log.info("MSF step %d: loss %.4f (lm %.4f, rec %.6f), mean dev %.4f", done, row["loss"],
                     row["lm_loss"], row["rec_loss"], row["dev_mean"])
        for r in rows:
            append_jsonl(history, r)
            tracker.log_metrics({k: v for k, v in r.items() if k != "step"}, step=r["step"])
        if checkpoint:  # after history (and the best AE's files) hold every step up to `done`
            _save_resume_state(out, done, ae, opt, sched, sampler, best, m.eval_max_examples)
    return best


RESUME_FILE = "resume.pt"  # in msf.partial/: the training state at the last checkpoint step
TRACKING_FILE = "tracking.json"  # the MLflow run training in this directory (a continued run supersedes it)
BEST_FILES = ("autoencoder.safetensors", "msf.json")  # the best AE so far (save_msf_checkpoint)


def _save_resume_state(out: Path, done: int, ae, opt, sched, sampler, best: BestTracker,
                       eval_max_examples: int | None) -> None:
    """Everything a stopped run needs to go on exactly as if it had not stopped (written atomically),
    the best AE's files included: a stop between saving a new best and this state must not leave
    files of a best the restored keep-best state does not know."""
    import io

    state = {"step": done, "ae": ae.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
             "sampler": sampler.state_dict(), "best_dev": best.best, "best_step": best.step,
             "best_files": {f: (out / f).read_bytes() for f in BEST_FILES if (out / f).is_file()},
             "eval_max_examples": eval_max_examples, "cpu_rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(out / RESUME_FILE, buf.getvalue())


def _load_resume_state(out: Path) -> dict:
    # On the CPU: RNG states must be CPU tensors; load_state_dict moves the rest to the parameters' device.
    return torch.load(out / RESUME_FILE, map_location="cpu", weights_only=False)  # our own file


def _check_resume_settings(out: Path, state: dict, cfg: IPTConfig) -> None:
    """Raises ConfigError when the stopped run in `out` evaluated dev on another `msf.eval_max_examples`
    (not a stage input, but keep-best would compare scores over other dev subsets)."""
    was, now = state.get("eval_max_examples"), cfg.msf.eval_max_examples
    if was != now:
        raise ConfigError(f"{out} holds a stopped MSF run whose dev scores used msf.eval_max_examples={was}; "
                          f"continuing with {now} would pick the best checkpoint over other dev subsets. Fix: "
                          f"--set msf.eval_max_examples={was}, or move {out} away to start over")


def _resume(out: Path, state: dict, ae, opt, sched, sampler, best: BestTracker) -> tuple[int, list[dict]]:
    """Load `state` (out/resume.pt of a stopped run of the same inputs and settings: `run_msf` checked
    them) into the training objects. History rows and best-AE files written after its step are put back
    as they were at that step (those steps run again). Returns (the step to continue after; the history
    rows kept)."""
    from ipt_dist.artifacts import read_jsonl

    ae.load_state_dict(state["ae"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    sampler.load_state_dict(state["sampler"])
    best.best, best.step = float(state["best_dev"]), int(state["best_step"])
    torch.set_rng_state(state["cpu_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    step = int(state["step"])
    history = out / "history.jsonl"
    kept = [r for r in read_jsonl(history) if r["step"] <= step] if history.is_file() else []
    atomic_write_bytes(history, "".join(json.dumps(r) + "\n" for r in kept).encode())
    for name in BEST_FILES:  # as they were at `step`; a best found after it is found again by the replay
        if name in state["best_files"]:
            atomic_write_bytes(out / name, state["best_files"][name])
        else:
            (out / name).unlink(missing_ok=True)
    log.info("MSF: resumed from step %d of %s (best mean dev %.4f at step %d)", step, out, best.best, best.step)
    return step, kept


def run_msf(cfg: IPTConfig, tracker=None) -> dict:
    """Train MSF; keep the best mean-dev checkpoint in `<output_dir>/msf`. Returns a summary.

    With a tracker: the training tasks' draws are the run's dataset inputs, the metrics are logged
    per step, and the finished checkpoint is logged as an MLflow `LoggedModel` of the run.

    Raises:
        ArtifactError: a training task without a usable stage-0 prompt (checked before training).
    """
    cfg = resolve_auto_dtype(cfg, pick_device().type)  # backbone.dtype "auto" -> what this device runs fast
    final = stage_dir(cfg, "msf")
    tracker = tracker or NullTracker()
    ensure_writable_dir(cfg.output_dir)
    split = resolve_tasks(cfg)
    inputs = msf_inputs(cfg, split.train, msf_prompts_dir(cfg))
    finished = _finished_msf(final, inputs)
    if finished is not None:
        return finished
    # The prompts' draw and backbone are checked before anything is written or loaded.
    raw = load_raw(cfg, split.train)
    problem, unrecorded = check_msf_prompts(cfg, raw, cfg.data.data_seed, msf_prompts_dir(cfg))
    if problem:
        raise ArtifactError(problem)
    if unrecorded:
        log.warning("MSF: %d stage-0 prompt files record no provenance (%s): their draw and backbone are not "
                    "checked", len(unrecorded), ", ".join(unrecorded[:5]))
    # Train into msf.partial/ and rename it to msf/ when done: msf/ only ever holds a finished run.
    # A stopped run of the same inputs goes on from its last checkpoint (`msf.checkpoint_every`
    # steps and every dev evaluation); one of other inputs, or without a checkpoint, is kept aside.
    partial = stage_dir(cfg, "msf.partial")
    if _finished_partial(partial, inputs):  # stopped between its summary and the rename: only the rename is left
        return _publish(partial, final, tracker)
    why_not = _why_not_resumable(partial, inputs) if partial.exists() else None
    if why_not:
        aside = partial.with_name(f"msf.interrupted-{time.strftime('%Y%m%d-%H%M%S')}")
        partial.rename(aside)
        log.warning("MSF: %s held an interrupted run with %s (kept, moved to %s); starting over", partial,
                    why_not, aside)
    resume = _load_resume_state(partial) if partial.exists() else None  # still there: a run to continue
    if resume is not None:  # its settings that are not inputs, checked before any work
        _check_resume_settings(partial, resume, cfg)
    out = ensure_writable_dir(partial)
    claim_stage_dir(out, "msf", inputs, cfg)
    run_file = out / TRACKING_FILE  # the tracking run of the stopped run this one continues, if any
    if run_file.is_file():
        try:
            tracker.supersede(json.loads(run_file.read_text()).get("mlflow_run_id"))
        except (OSError, ValueError, AttributeError) as exc:  # tracking never stops the stage
            log.warning("MSF: %s unreadable (%s): the stopped run's MLflow run is left as it is", run_file, exc)
    if tracker.run_id:
        atomic_write_bytes(run_file, json.dumps({"mlflow_run_id": tracker.run_id}).encode())
    else:  # untracked now: the file must not name an earlier run as the one that trains this result
        run_file.unlink(missing_ok=True)
    device = pick_device()
    backbone = build_backbone(cfg.backbone, device)
    H, L = backbone.hidden_size, cfg.pt.prompt_len
    prompts = load_task_prompts(msf_prompts_dir(cfg), split.train, L, H, backbone.name).to(device)
    provenance = msf_provenance(cfg, raw, cfg.data.data_seed, msf_prompts_dir(cfg))
    tracker.log_inputs(msf_datasets(cfg, provenance, {t: len(raw[t].train) for t in split.train}))
    tok = tokenize_raw(cfg, backbone, raw)
    data = [tok[t] for t in split.train]
    t0 = time.time()
    best = train_msf(cfg, backbone, prompts, data, split.train, out, provenance, tracker, resume)
    summary = {"best_dev": best.best, "best_step": best.step, "steps": cfg.msf.steps, "seconds": time.time() - t0,
               "checkpoint": str(final), "d": cfg.msf.d, "tasks": split.train}
    if resume:  # "seconds" is then this invocation's, from that step on
        summary["resumed_from_step"] = int(resume["step"])
    atomic_write_bytes(out / "summary.json", json.dumps(summary, indent=2).encode())
    (out / RESUME_FILE).unlink(missing_ok=True)  # finished: msf/ holds the result, not a training state
    return _publish(out, final, tracker)


def _changed_inputs(partial: Path, inputs: dict) -> str | None:
    """The fields `inputs` change against what `partial` recorded ("" = none); None: no record."""
    from ipt_dist.config import describe_changes

    before = recorded_inputs(partial) if partial.is_dir() else None
    return None if before is None else describe_changes(before, inputs)


def _finished_partial(partial: Path, inputs: dict) -> bool:
    """`partial` holds a finished run of these inputs (summary.json written, not yet renamed)."""
    return ((partial / "summary.json").is_file() and not (partial / RESUME_FILE).is_file()
            and _changed_inputs(partial, inputs) == "")


def _publish(out: Path, final: Path, tracker) -> dict:
    """Rename the finished run in `out` to `final` (msf/ only ever holds a finished run); its summary."""
    if final.is_dir() and not any(final.iterdir()):
        final.rmdir()  # an empty directory (e.g. made by hand) is not a finished run
    out.rename(final)
    log_msf_model(tracker, final)
    log.info("MSF finished: %s", final)
    return json.loads((final / "summary.json").read_text())


def _why_not_resumable(partial: Path, inputs: dict) -> str | None:
    """Why the stopped run in `partial` cannot be continued with `inputs` (None: it can, it has a
    checkpoint and was started from these same inputs)."""
    diff = _changed_inputs(partial, inputs)
    if not (partial / RESUME_FILE).is_file() or diff is None:
        return "no checkpoint"
    return f"other inputs ({diff})" if diff else None


def _finished_msf(final: Path, inputs: dict) -> dict | None:
    """The summary of a finished run in `final` with these inputs (skipped), None when there is none.

    Raises:
        ConfigError: `final` holds a run of other inputs, or one this command cannot check (no
            inputs record: distributed MSF or an older ipt_dist, or no summary: not finished).
    """
    if not final.is_dir() or not any(final.iterdir()):
        return None
    if not (final / "summary.json").is_file() or recorded_inputs(final) is None:
        raise ConfigError(f"{final} holds an MSF checkpoint that is not a finished `ipt msf` run of recorded inputs "
                          "(written by distributed MSF, an older ipt_dist, or interrupted). It is never "
                          "overwritten. Fix: run with another --out, or move it away")
    claim_stage_dir(final, "msf", inputs)  # same inputs, or a ConfigError naming the changed fields
    log.info("MSF already trained with these inputs in %s (skipped)", final)
    return json.loads((final / "summary.json").read_text())
