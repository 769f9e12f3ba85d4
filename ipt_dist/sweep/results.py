"""The sweep's files: `results.jsonl` (one line per finished job, the source of truth), the
learned parameter of each job (`params/<job_id>.safetensors`), `failures.jsonl`, the summary, the
stage-0 PT results IST divides by, and the stage-0 prompt files the PT sweep exports for MSF.

Only the sweep driver writes here (workers return their results), so nothing needs a lock.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ipt_dist.artifacts import (
    ArtifactError,
    append_jsonl,
    atomic_write_bytes,
    load_prompt,
    prompt_path,
    read_jsonl,
    save_prompt,
)
from ipt_dist.config import IPTConfig
from ipt_dist.data.selection import load_raw
from ipt_dist.summary import Summary, select_best_lr, summarize_ist, summarize_pt
from ipt_dist.sweep.grid import expand_ipt_pt_jobs
from ipt_dist.sweep.jobs import JobSpec, SweepPlan, prompts_dir
from ipt_dist.sweep.progress import SweepProgress

__all__ = ["SweepResult", "load_param", "pt_baseline_records", "record_failure", "repair_torn_line", "save_param",
           "store_result", "write_summary"]

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    """What `run_sweep` returns: counts of this submission and the summary of all results."""

    stage: str
    sweep_dir: Path
    jobs_total: int
    jobs_started: int  # jobs sent to Ray in this submission
    jobs_skipped: int  # already in results.jsonl
    jobs_failed: int
    failed_job_ids: list[str]
    summary: Summary | None  # None only when writing it failed (e.g. disk full)
    parent_run_id: str | None = None
    # driver wall seconds: "prepare" (plan, checks, MLflow start and catch-up, Ray start), "packs" (fan-out),
    # "finish" (summary, MLflow parent), "total"
    timings: dict[str, float] = field(default_factory=dict)


def save_param(path: Path, name: str, tensor: torch.Tensor, meta: dict) -> None:
    from safetensors.torch import save

    atomic_write_bytes(path, save({name: tensor.detach().float().contiguous().cpu()},
                                  metadata={k: json.dumps(v) for k, v in meta.items()}))


def load_param(path: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    return next(iter(tensors.values()))


def repair_torn_line(path: Path) -> None:
    """A driver killed mid-append leaves a last line without newline: end it so the next
    append starts a fresh line (read_jsonl skips the torn one; that job simply runs again)."""
    if path.is_file() and path.stat().st_size:
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")


def record_failure(plan: SweepPlan, pack: list[JobSpec], exc: Exception, failed: list[str],
                    progress: SweepProgress) -> None:
    """A pack that raised (not retried: deterministic) or whose worker died more than max_retries
    times. Its jobs stay out of results.jsonl, so the next submission runs them again."""
    failed.extend(j.job_id for j in pack)
    progress.failed += len(pack)
    err = f"{type(exc).__name__}: {str(exc)[-4000:]}"
    last = [ln for ln in err.splitlines() if ln.strip()][-1]
    log.error("%s sweep: pack of %d jobs (%s, tasks %s) failed: %s", plan.stage, len(pack), pack[0].job_id,
              ", ".join(sorted({j.task for j in pack})), last)
    append_jsonl(plan.sweep_dir / "failures.jsonl", {"job_ids": [j.job_id for j in pack],
                                                      "tasks": [j.task for j in pack], "error": err,
                                                      "time": time.time()})


def store_result(plan: SweepPlan, out: dict, done: dict, results_file: Path, tracker, pt_scores: dict) -> None:
    """Param file first, then the results line (a line implies its param file), then MLflow."""
    rec = dict(out["record"])
    job_id = rec["job_id"]
    ppath = plan.sweep_dir / "params" / f"{job_id}.safetensors"
    meta = {"job_id": job_id, "task": rec["task"], "role": rec.get("role"), "backbone": rec.get("backbone")}
    save_param(ppath, out["param_name"], out["param"], meta)
    rec["param_file"] = str(ppath.relative_to(plan.sweep_dir))
    append_jsonl(results_file, rec)
    done[job_id] = rec
    tracker.log_job(rec, ppath, pt_scores.get((rec["task"], rec.get("data_seed"))))


def pt_baseline_records(cfg: IPTConfig) -> list[dict]:
    """Stage-0 PT results per task, each with its `data_seed` (the draw it pairs with): the PT
    sweep's results (every draw of sweep.data_seeds), else `ipt pt`'s (one draw), else the scores
    stored in the prompt files' metadata (one draw; none for files without `data_seed`). The first
    source that has a task wins for all of that task's draws."""
    out = Path(cfg.output_dir)
    records: list[dict] = []
    have: set[str] = set()
    for path in (out / "pt_sweep" / "results.jsonl", out / "pt" / "results.jsonl"):
        rs = [r for r in read_jsonl(path) if r.get("kind") == "pt" and r.get("role", "pt") == "pt"
              and r.get("task") not in have]
        records += [{**r, "role": "pt"} for r in rs]
        have |= {r["task"] for r in rs}
    pdir = prompts_dir(cfg)
    if pdir.is_dir():
        for f in sorted(pdir.glob("*.safetensors")):
            t = f.stem
            if t in have:
                continue
            try:
                _, meta = load_prompt(f)
            except (FileNotFoundError, ArtifactError):
                continue
            if meta.get("test_score") is not None:
                records.append({"job_id": f"prompt:{t}", "task": t, "role": "pt", "kind": "pt",
                                "lr": meta.get("lr"), "seed": meta.get("seed"),
                                "data_seed": meta.get("data_seed"), "metric": meta.get("metric"),
                                "best_dev": meta.get("dev_score"), "test": meta.get("test_score")})
    return records


def write_summary(plan: SweepPlan, records: list[dict], pt_records: list[dict]) -> Summary:
    sdir = plan.sweep_dir
    # Results of jobs no longer in the grid (an lr dropped from the config, an IPT-init PT from an
    # earlier z*) stay in results.jsonl but not in the summary.
    job_ids = {j.job_id for j in plan.jobs} | {j.job_id for j in expand_ipt_pt_jobs(plan, records)}
    mine = [r for r in records if r["job_id"] in job_ids]
    if plan.stage == "pt":
        summary = summarize_pt(mine, plan.train_tasks, plan.unseen_tasks)
        write_stage0_prompts(plan, mine)
    else:
        summary = summarize_ist(mine, pt_records, plan.train_tasks, plan.unseen_tasks)
    (sdir / "summary.md").write_text(summary.to_markdown())
    summary.write_csv(sdir / "summary.csv", sdir / "summary_settings.csv")
    (sdir / "summary.json").write_text(json.dumps(summary.to_dict(), indent=1, default=str))
    return summary


def stage0_choice(records: list[dict], same_seed: int) -> dict[str, dict]:
    """Per task, the PT job whose prompt is P_i: the data seed MSF trains on, at the lr that
    `select_best_lr` picks over all draws, i.e. the lr whose PT is the denominator of every ratio
    (summary.summarize_ist). Choosing P_i by the first draw's dev alone could pair a setting-1 ratio
    of a perfect reconstruction with another lr's PT (1.21 instead of 1.0). Only lrs with a job
    at `same_seed` compete."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if r.get("role") == "pt":
            by_task[r["task"]].append(r)
    out = {}
    for t, rs in by_task.items():
        lrs = {r.get("lr") for r in rs if r.get("data_seed") == same_seed}
        sel = select_best_lr([r for r in rs if r.get("lr") in lrs])
        ids = set(sel.job_ids)
        at_seed = [r for r in rs if r["job_id"] in ids and r.get("data_seed") == same_seed]
        if at_seed:
            out[t] = min(at_seed, key=lambda r: r["job_id"])
    return out


def write_stage0_prompts(plan: SweepPlan, records: list[dict]) -> None:
    """P_i of each task (`stage0_choice`: the PT/MSF data seed's job at the lr with the best mean dev
    over draws), written as the prompt file MSF reads."""
    from ipt_dist.provenance import prompt_provenance

    pdir = prompts_dir(plan.cfg)
    by_task = stage0_choice(records, plan.same_seed)
    mine = {r["job_id"] for r in records}
    for t, best in sorted(by_task.items()):
        path = prompt_path(pdir, t)
        if path.is_file():
            try:
                owner = load_prompt(path)[1].get("job_id")
            except ArtifactError:
                owner = None
            if owner == best["job_id"]:
                continue
            if owner not in mine:  # written by `ipt pt` or another sweep: MSF may have been trained on it
                log.warning("stage 0: kept %s (not written by this sweep); delete it to use this sweep's prompt",
                            path)
                continue
        prompt = load_param(plan.sweep_dir / best["param_file"])
        task = load_raw(plan.cfg, [t], plan.same_seed)[t]  # as PT trained on it: the prompt's provenance
        save_prompt(path, prompt, backbone=best.get("backbone"), task=t, metric=best.get("metric"),
                    dev_score=best.get("best_dev"), test_score=best.get("test"), lr=best.get("lr"),
                    seed=best.get("data_seed"), data_seed=best.get("data_seed"), job_id=best["job_id"],
                    provenance=prompt_provenance(plan.cfg, task, plan.same_seed))
    if by_task:
        log.info("stage 0: wrote %d prompt files (data seed %d, the lr with the best mean dev over draws) to %s",
                 len(by_task), plan.same_seed, pdir)
