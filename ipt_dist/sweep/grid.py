"""The sweep's grid: which jobs a PT or IST sweep runs (the five evaluation settings of the paper,
the random- and PCA-decoder baselines, and PT beside IPT-initialised PT).

Settings (see docs/sweeps.md): 1 `msf_seen` and 2 `msf_unseen` score Dec(Enc(P_i)) with no
training; 3 `ist_seen_same` (training tasks, the PT/MSF draw), 4 `ist_seen_new` (training tasks,
the other draws) and 5 `ist_unseen` (held-out tasks, every draw) train z per task, draw and lr.
Pure functions of the config and the checked decoders: no Ray, no backbone, no file writes.
"""

from __future__ import annotations

from collections import defaultdict

from ipt_dist.artifacts import msf_training_tasks
from ipt_dist.config import IPTConfig
from ipt_dist.provenance import prompt_digest
from ipt_dist.summary import select_best_lr
from ipt_dist.sweep.jobs import (
    IST_DECODERS,
    DecoderInfo,
    JobSpec,
    SweepPlan,
    digest,
    job_context,
    make_job,
    prompts_dir,
)

__all__ = ["expand_ipt_pt_jobs", "expand_ist", "expand_pt", "msf_eval_tasks", "pca_tasks"]


def msf_eval_tasks(cfg: IPTConfig, train: list[str], unseen: list[str]) -> list[str]:
    """The tasks whose stage-0 prompts settings 1-2 encode."""
    settings = cfg.sweep.settings
    return (train if "msf_seen" in settings else []) + (unseen if "msf_unseen" in settings else [])


def pca_tasks(info: DecoderInfo, train: list[str]) -> list[str]:
    """The MSF checkpoint's training tasks: their stage-0 prompts span the PCA decoder of d and give
    the centroid z starts at (`ist.z_init: centroid`)."""
    return msf_training_tasks(info.meta, train)


def expand_pt(cfg: IPTConfig, train: list[str], unseen: list[str]) -> list[JobSpec]:
    """Stage 0: every task (seen and unseen) x data seed x lr."""
    ctx = job_context(cfg, "pt")
    tasks = train + [u for u in unseen if u not in train]
    return [make_job(ctx, stage="pt", role="pt", kind="pt", task=t, seen=t in train, data_seed=s, lr=float(lr),
                     grad_clip=cfg.pt.grad_clip)
            for t in tasks for s in cfg.sweep.data_seeds for lr in cfg.sweep.lrs]


def _decoder_id(cfg: IPTConfig, decoder: str, info: DecoderInfo, train: list[str]) -> str:
    """What identifies the decoder of d in the job ids."""
    if decoder == "msf":
        return info.fingerprint
    if decoder == "random":  # the no-MSF baseline: same shapes, PyTorch's default init seeded with ist.seed
        m = info.meta
        return digest({"random": cfg.ist.seed, "shape": [m["d"], m["prompt_len"], m["hidden"], m["mid_dim"]]})
    # PCA of the stage-0 prompts: changed prompt files (or d) give new ids
    pdir = prompts_dir(cfg)
    return digest({"pca": info.d, "prompts": {t: prompt_digest(pdir, t, 40) for t in pca_tasks(info, train)}})


def expand_ist(cfg: IPTConfig, train: list[str], unseen: list[str], decoders: dict[int, DecoderInfo],
               same: int) -> tuple[list[JobSpec], int]:
    """Settings 1-5 per d (and the random- and PCA-decoder baselines), plus plain PT beside IPT-init PT.

    Returns (jobs, number of phase-2 IPT-init PT jobs once the IST results exist).
    """
    sw = cfg.sweep
    settings = set(sw.settings)
    pdir = prompts_dir(cfg)
    prompt_fp = {t: prompt_digest(pdir, t, 40) for t in msf_eval_tasks(cfg, train, unseen)}
    grid = []  # (setting, task, data seed) of the IST jobs; each runs once per lr
    if "ist_seen_same" in settings:
        grid += [("ist_seen_same", t, same) for t in train]
    if "ist_seen_new" in settings:
        grid += [("ist_seen_new", t, s) for t in train for s in sw.data_seeds[1:]]
    if "ist_unseen" in settings:
        grid += [("ist_unseen", t, s) for t in unseen for s in sw.data_seeds]
    jobs: list[JobSpec] = []
    wanted = {"msf": True, "random": sw.random_decoder, "pca": sw.pca_decoder}
    for d, info in sorted(decoders.items()):
        for decoder in [name for name in IST_DECODERS if wanted[name]]:
            dec_id = _decoder_id(cfg, decoder, info, train)
            common = {"stage": "ist", "d": d, "decoder": decoder,
                      "msf_run_id": info.msf_run_id if decoder == "msf" else None}
            if decoder == "msf":
                eval_ctx = {**job_context(cfg, "msf_eval"), "decoder": dec_id}
                for setting, tasks in (("msf_seen", train), ("msf_unseen", unseen)):
                    if setting in settings:
                        jobs += [make_job({**eval_ctx, "prompt": prompt_fp[t]}, role="msf_eval",
                                          kind="msf_eval", task=t, seen=setting == "msf_seen", data_seed=same,
                                          setting=setting, **common) for t in tasks]
            ist_ctx = {**job_context(cfg, "ist"), "decoder": dec_id}
            jobs += [make_job(ist_ctx, role="ist", kind="ist", task=t, seen=t in train, data_seed=s,
                              setting=setting, lr=float(lr), grad_clip=cfg.ist.grad_clip, **common)
                     for setting, t, s in grid for lr in (sw.ist_lrs or sw.lrs)]
    pairs = sorted({(t, s) for _, t, s in grid})
    expected_ipt = len(pairs) * len(decoders) if sw.ipt_init_pt else 0
    if sw.ipt_init_pt:  # plain PT beside IPT-initialised PT: same lr, seeds and schedule
        pt_ctx = job_context(cfg, "pt")
        jobs += [make_job(pt_ctx, stage="ist", role="pt_control", kind="pt", task=t, seen=t in train,
                          data_seed=s, lr=float(cfg.pt.lr), grad_clip=cfg.pt.grad_clip) for t, s in pairs]
    return jobs, expected_ipt


def expand_ipt_pt_jobs(plan: SweepPlan, records: list[dict]) -> list[JobSpec]:
    """Phase 2: PT initialised from Dec(z*), z* = the IST job with the best dev over lrs for the same
    (task, data seed, d) with the MSF decoder. Only groups with IST results get a job."""
    if not plan.cfg.sweep.ipt_init_pt:
        return []
    cfg = plan.cfg
    ctx = job_context(cfg, "pt")
    grid = {j.job_id for j in plan.jobs}  # IST results of this grid only
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        if r.get("role") == "ist" and r.get("decoder") == "msf" and r["job_id"] in grid:
            groups[(r["task"], r["data_seed"], r["d"], bool(r.get("seen")))].append(r)
    jobs = []
    for (t, s, d, seen), rs in sorted(groups.items()):
        src = select_best_lr(rs).job_ids[0]
        info = plan.decoders[d]
        jobs.append(make_job(ctx, stage="ist", role="ipt_pt", kind="pt", task=t, seen=seen, data_seed=s,
                             lr=float(cfg.pt.lr), grad_clip=cfg.pt.grad_clip, d=d, decoder="msf", z_source=src,
                             msf_run_id=info.msf_run_id))
    return jobs
