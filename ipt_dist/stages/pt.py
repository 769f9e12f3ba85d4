"""Stage 0, single process: prompt tuning of every task -> prompt files + PT baseline scores.

    ipt pt --config configs/demo.yaml
"""

from __future__ import annotations

import logging

from ipt_dist.artifacts import (
    append_jsonl,
    ensure_writable_dir,
    load_task_prompts,
    prompt_path,
    read_jsonl,
    save_prompt,
)
from ipt_dist.config import ConfigError, IPTConfig
from ipt_dist.data.selection import load_raw, resolve_tasks, tokenize_raw
from ipt_dist.modeling.backbone import build_backbone, resolve_auto_dtype
from ipt_dist.paths import pt_prompts_dir, stage_dir
from ipt_dist.provenance import prompt_provenance
from ipt_dist.rerun import claim_stage_dir, recorded_inputs, stage_inputs
from ipt_dist.stages.common import pick_device
from ipt_dist.tracking import log_raw_draws
from ipt_dist.train.packed import Job, PackSettings, train_pack

log = logging.getLogger(__name__)


def pt_settings(cfg: IPTConfig) -> PackSettings:
    """`PackSettings.from_config(cfg, "pt")` (kept for callers of this name)."""
    return PackSettings.from_config(cfg, "pt")


def run_pt(cfg: IPTConfig, tasks: list[str] | None = None, tracker=None) -> list[dict]:
    """Train one prompt per task (packed `sweep.pack_size` at a time); skip tasks already done.

    Writes `<output_dir>/prompts/<task>.safetensors` and `<output_dir>/pt/results.jsonl`.
    Returns the result records of all requested tasks (earlier ones read back from disk).
    """
    cfg = resolve_auto_dtype(cfg, pick_device().type)  # backbone.dtype "auto" -> what this device runs fast
    out = ensure_writable_dir(cfg.output_dir)
    prompts_dir, results_file = pt_prompts_dir(cfg), stage_dir(cfg, "pt") / "results.jsonl"
    tasks = tasks or resolve_tasks(cfg).all
    if results_file.is_file() and recorded_inputs(out / "pt") is None:
        raise ConfigError(f"{out / 'pt'} holds PT results written without a record of their inputs (an older "
                          "ipt_dist): they cannot be checked against this config. Fix: run with another --out")
    claim_stage_dir(out / "pt", "pt", stage_inputs(cfg, "pt"), cfg,  # refuses changed inputs, before any work
                    has_results=bool(read_jsonl(results_file)))
    done = {r["task"]: r for r in read_jsonl(results_file) if prompt_path(prompts_dir, r["task"]).is_file()}
    todo = [t for t in tasks if t not in done]
    foreign = [t for t in todo if prompt_path(prompts_dir, t).is_file()]
    if foreign:
        raise ConfigError(f"{prompts_dir} already holds prompt files that `ipt pt` did not write here (e.g. the PT "
                          f"sweep's): {', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}. They are never "
                          "overwritten. Fix: run with another --out, or move those files away")
    if not todo:
        log.info("stage 0: all %d prompts already trained with these inputs in %s (skipped)", len(tasks),
                 prompts_dir)
        return [done[t] for t in tasks]
    if done:
        log.info("stage 0: %d of %d prompts already trained with these inputs (skipped); training %d", len(done),
                 len(tasks), len(todo))
    backbone = build_backbone(cfg.backbone, pick_device())
    raw = load_raw(cfg, todo)  # fails on bad data before any training
    data = tokenize_raw(cfg, backbone, raw)
    log_raw_draws(tracker, cfg, raw)  # each task's draw as a dataset input of this run (MLflow 3)
    init = None
    if cfg.pt.init_from:  # prompt files or PEFT adapters, checked like MSF's: shape (L, H), backbone
        init = load_task_prompts(cfg.pt.init_from, todo, cfg.pt.prompt_len, backbone.hidden_size, backbone.name)
    jobs = [Job(job_id=f"pt-{t}", task=t, kind="pt", lr=cfg.pt.lr, seed=cfg.pt.seed, grad_clip=cfg.pt.grad_clip,
                params={"data_seed": cfg.data.data_seed}) for t in todo]
    K = cfg.sweep.pack_size
    for s in range(0, len(jobs), K):
        pack = jobs[s : s + K]
        log.info("stage 0: training prompts %d-%d of %d", s + 1, s + len(pack), len(jobs))
        results = train_pack(backbone, pack, {j.job_id: data[j.task] for j in pack}, pt_settings(cfg),
                             prompt_len=cfg.pt.prompt_len, init=None if init is None else init[s : s + K],
                             progress=True)
        for r in results:
            save_prompt(prompt_path(prompts_dir, r.job.task), r.best_param, backbone=backbone.name,
                        task=r.job.task, metric=r.metric, dev_score=r.best_dev, test_score=r.test, lr=r.job.lr,
                        seed=r.job.seed, data_seed=cfg.data.data_seed,
                        provenance=prompt_provenance(cfg, raw[r.job.task], cfg.data.data_seed))
            rec = r.record()
            append_jsonl(results_file, rec)
            done[r.job.task] = rec
            if tracker is not None:
                tracker.log_metrics({f"pt/{r.job.task}/dev": r.best_dev, f"pt/{r.job.task}/test": r.test})
            log.info("PT %s: best dev %.4f at step %d, test %.4f", r.job.task, r.best_dev, r.best_step, r.test)
    return [done[t] for t in tasks]
