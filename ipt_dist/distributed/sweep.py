"""PT and IST sweeps fanned out as Ray tasks, K jobs packed per task, tracked from the driver.

    python ray_jobs/ist_sweep.py --smoke-test --out /tmp/ipt_smoke
    python ray_jobs/ist_sweep.py --config configs/ist_sweep.yaml --out /abs/path/runs/ist
    ray job submit --working-dir . -- python ray_jobs/ist_sweep.py --config configs/ist_sweep.yaml --out /abs/..

Flow: config -> `plan_sweep` (validates everything and expands the grid into `JobSpec`s with
content-derived ids; no Ray, no backbone) -> skip jobs already in `results.jsonl` -> group the
rest into packs that share kind, decoder and schedule (`group_packs`) -> one Ray task per pack
(`run_pack`, which calls the core `train_pack`) with at most `sweep.max_in_flight` packs in
flight -> the driver alone writes params, results and MLflow (`SweepTracker`) -> summary
(`ipt_dist.summary`).

Output layout (`<output_dir>/<stage>_sweep/`): `results.jsonl` (source of truth, one line per
finished job), `params/<job_id>.safetensors` (learned z, prompt, or Enc(P_i)), `jobs.jsonl`
(the expanded plan), `failures.jsonl`, `summary.{md,csv,json}`, `summary_settings.csv`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ipt_dist.artifacts import (
    ArtifactError,
    append_jsonl,
    atomic_write_bytes,
    ensure_writable_dir,
    find_prompt,
    load_msf_checkpoint,
    load_prompt,
    load_task_prompts,
    prompt_path,
    read_jsonl,
    read_msf_meta,
    save_prompt,
)
from ipt_dist.config import ConfigError, IPTConfig, config_from_dict, config_to_dict
from ipt_dist.distributed.pack_progress import fmt_secs
from ipt_dist.provenance import prompt_digest
from ipt_dist.summary import Summary, pt_scores_by_draw, select_best_lr, summarize_ist, summarize_pt

log = logging.getLogger(__name__)

STAGES = ("ist", "pt")
IST_SETTINGS = ("ist_seen_same", "ist_seen_new", "ist_unseen")
# Decoders of IST jobs: MSF's, and the baselines sweep.random_decoder / sweep.pca_decoder add.
IST_DECODERS = ("msf", "random", "pca")
# Test hook: "<job id or task>:<marker file>" makes the pack holding that job kill its worker
# process (os._exit) on the first attempt, so Ray's task retry can be tested with real workers.
CRASH_ENV = "IPT_SWEEP_TEST_CRASH_ONCE"
HEARTBEAT_S = 60.0  # the driver's progress line while no pack finishes (with each running pack's steps)
WAIT_S = 30.0  # the driver wakes at least this often to check the heartbeat

__all__ = [
    "CRASH_ENV",
    "STAGES",
    "JobSpec",
    "SweepPlan",
    "SweepResult",
    "expand_ipt_pt_jobs",
    "group_packs",
    "init_ray",
    "pack_cost",
    "PackRunner",
    "plan_sweep",
    "prepare_config",
    "prepare_smoke",
    "task_slots",
    "run_pack",
    "run_sweep",
    "sweep_dir",
]


# ----------------------------------------------------------------------------- job specs


@dataclass(frozen=True)
class JobSpec:
    """One job of a sweep. Every field but `job_id` and `msf_run_id` defines it (and its id)."""

    job_id: str
    stage: str  # the sweep it belongs to: "ist" | "pt"
    role: str  # "ist" | "msf_eval" | "pt" | "pt_control" | "ipt_pt"
    kind: str  # what runs: "ist" | "pt" (train_pack) | "msf_eval" (settings 1-2, no training)
    task: str
    seen: bool  # an MSF training task
    data_seed: int  # few-shot draw; also the job's seed (init and data order)
    setting: str | None = None  # one of the five evaluation settings (IST and MSF jobs)
    lr: float | None = None
    grad_clip: float = 0.0
    d: int | None = None
    decoder: str | None = None  # "msf" | "random" | "pca" (see IST_DECODERS)
    z_source: str | None = None  # ipt_pt: the IST job whose z* gives the initial prompt Dec(z*)
    msf_run_id: str | None = None  # logged when the MSF checkpoint knows its MLflow run

    def pack_key(self) -> tuple:
        """Jobs with equal keys may share a pack (one backbone pass, one schedule, one decoder)."""
        if self.kind == "pt":
            return ("pt",)
        return (self.kind, self.d, self.decoder)

    def params(self) -> dict:
        """The fields recorded with the job's result."""
        return {"stage": self.stage, "role": self.role, "setting": self.setting, "d": self.d,
                "decoder": self.decoder, "data_seed": self.data_seed, "seen": self.seen,
                "z_source": self.z_source, "msf_run_id": self.msf_run_id}


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def make_job(context: dict, **fields) -> JobSpec:
    """A JobSpec whose id is a hash of its defining fields plus the run context (backbone,
    data, schedule, decoder fingerprint): the same job gets the same id in every submission."""
    defining = {k: v for k, v in fields.items() if k != "msf_run_id"}
    job_id = f"{fields['role']}-{_digest({'job': defining, 'context': context})[:14]}"
    return JobSpec(job_id=job_id, **fields)


@dataclass
class DecoderInfo:
    """An MSF checkpoint of one intrinsic dimension, checked against the config."""

    d: int
    path: Path
    meta: dict
    fingerprint: str  # sha1 of msf.json: a retrained MSF gives new job ids
    msf_run_id: str | None = None


@dataclass
class SweepPlan:
    stage: str
    cfg: IPTConfig  # resolved: absolute paths
    sweep_dir: Path
    train_tasks: list[str]
    unseen_tasks: list[str]
    same_seed: int  # the data seed of PT/MSF: setting 3 (and 1-2) use it, setting 4 the others
    jobs: list[JobSpec]  # phase 1 (phase 2, IPT-initialised PT, needs IST results: expand_ipt_pt_jobs)
    decoders: dict[int, DecoderInfo] = field(default_factory=dict)
    expected_ipt_pt: int = 0  # number of phase-2 jobs once phase 1 is complete
    warnings: list[str] = field(default_factory=list)
    pt_records: list[dict] = field(default_factory=list)  # IST: stage-0 PT results, the denominators
    # (task, data seed) -> (digest of the training split, its size): each child run's dataset input
    train_digests: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)


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


# ----------------------------------------------------------------------------- config + planning


def sweep_dir(cfg: IPTConfig, stage: str) -> Path:
    return Path(cfg.output_dir) / f"{stage}_sweep"


def _abs(path: str | os.PathLike, base: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (base / p)


def prepare_config(cfg: IPTConfig) -> IPTConfig:
    """A copy with absolute paths: output_dir, data_dir (demo tasks written if none is given),
    split/tasks files and msf.prompts_dir are taken relative to the current directory;
    sweep.dims relative to output_dir (where `--smoke-test` trains them)."""
    from ipt_dist.stages.common import data_dir

    from ipt_dist.modeling.backbone import resolve_auto_dtype

    cfg = config_from_dict(config_to_dict(cfg), "sweep config")
    cfg = resolve_auto_dtype(cfg, "cuda" if cfg.sweep.num_gpus > 0 else "cpu")  # where the packs run
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") and not Path(cfg.output_dir).expanduser().is_absolute():
        log.warning("output_dir %r is relative and this driver runs under `ray job submit`, in a temporary "
                    "copy of --working-dir: results would be lost with it. Pass an absolute --out", cfg.output_dir)
    cfg.output_dir = str(Path(cfg.output_dir).expanduser().resolve())
    out = Path(cfg.output_dir)
    if cfg.data.format != "hf":
        cfg.data.data_dir = str(data_dir(cfg).resolve())
    for section, name in ((cfg.data, "split_file"), (cfg.data, "tasks_file"), (cfg.msf, "prompts_dir")):
        if getattr(section, name):  # cwd-relative, as everywhere else in the project
            setattr(section, name, str(Path(getattr(section, name)).expanduser().resolve()))
    cfg.sweep.dims = {int(d): str(_abs(p, out).resolve()) for d, p in cfg.sweep.dims.items()}
    return cfg


def _context(cfg: IPTConfig, kind: str) -> dict:
    """What, besides a job's own fields, changes its result (paths of outputs are not in it)."""
    from ipt_dist.stages.ist import ist_settings
    from ipt_dist.stages.pt import pt_settings

    b, d = cfg.backbone, cfg.data
    ctx = {"backbone": [b.name_or_path, b.arch, b.dtype, b.dropout, b.max_input_len, b.max_target_len,
                        b.label_smoothing, b.num_beams, b.max_new_tokens],
           "data": [d.data_dir, d.format, d.tasks_file, d.k, d.train_size, d.max_examples, d.task_prefix,
                    d.hf_input_column, d.hf_output_column],
           "prompt_len": cfg.pt.prompt_len}
    if b.chat_template:  # changes every token id; only when on, so ids of earlier sweeps stay valid
        ctx["chat_template"] = True
    if kind in ("ist", "pt"):
        s = asdict(ist_settings(cfg) if kind == "ist" else pt_settings(cfg))
        s.pop("eval_batch_size", None)
        s.pop("max_rows", None)
        ctx["schedule"] = s
    return ctx


def _check_decoder(cfg: IPTConfig, d: int, path: str, problems: list[str]) -> DecoderInfo | None:
    ckpt = Path(path)
    if not (ckpt / "msf.json").is_file():
        problems.append(f"sweep.dims[{d}]: no MSF checkpoint at {ckpt} (msf.json missing). Fix: train MSF with "
                        f"msf.d={d} (ipt msf / ray_jobs/msf.py) and point sweep.dims[{d}] at its directory")
        return None
    try:
        meta = read_msf_meta(ckpt)
    except ArtifactError as exc:
        problems.append(f"sweep.dims[{d}]: {exc}")
        return None
    if meta.get("d") != d:
        problems.append(f"sweep.dims[{d}]: the checkpoint {ckpt} has d={meta.get('d')}, not {d}. "
                        f"Fix: map each d to the checkpoint trained with msf.d=d")
    # backbone and prompt length: checked with the rest of the provenance (_check_provenance)
    if not (ckpt / "autoencoder.safetensors").is_file():
        problems.append(f"sweep.dims[{d}]: {ckpt / 'autoencoder.safetensors'} is missing; re-run MSF")
    run_id = meta.get("mlflow_run_id") or meta.get("run_id")
    return DecoderInfo(d=d, path=ckpt, meta=meta, fingerprint=_digest(meta), msf_run_id=run_id)


def plan_sweep(cfg: IPTConfig, stage: str = "ist", check_data: bool = True) -> SweepPlan:
    """Validate the sweep and expand it into jobs: every user error is raised here, before Ray
    starts or a backbone loads.

    Args:
        check_data: read every task's examples for every data seed (cheap: no tokenizer), so a
            missing seed file or a malformed line fails here and not in a worker.
    Raises:
        ConfigError: bad stage, seeds, settings, MSF checkpoints (missing, d or shape mismatch),
            missing stage-0 prompts for settings 1-2; all problems listed at once. Then (IST) a
            (task, draw) of a planned job without a stage-0 PT result on that draw.
        DataError: unknown tasks, a bad split file, missing or malformed data files.
    """
    if stage not in STAGES:
        raise ConfigError(f"stage must be one of {STAGES}, got {stage!r}")
    from ipt_dist.stages.common import resolve_tasks

    cfg = prepare_config(cfg)
    split = resolve_tasks(cfg)  # DataError names unknown tasks
    problems, warnings = _check_grid(cfg, split.train, split.unseen)
    decoders: dict[int, DecoderInfo] = {}
    if stage == "ist":
        decoders = _check_ist(cfg, split.train, split.unseen, problems)
        if cfg.sweep.pca_decoder:
            warnings += _check_pca(cfg, decoders, split.train, problems)
    if problems:
        raise ConfigError("invalid sweep:\n  - " + "\n  - ".join(problems))
    same = cfg.sweep.data_seeds[0]
    if stage == "pt":
        jobs, expected_ipt = _expand_pt(cfg, split.train, split.unseen), 0
    else:
        jobs, expected_ipt = _expand_ist(cfg, split.train, split.unseen, decoders, same)
    train_digests = _check_data(cfg, jobs) if check_data and cfg.data.format != "hf" else {}
    pt_records = []
    if stage == "ist":
        pt_records = _pt_baseline_records(cfg)
        _check_pt_denominators(cfg, jobs, pt_records)
    ids = [j.job_id for j in jobs]
    assert len(set(ids)) == len(ids), "job ids collide: two jobs of the grid have the same defining fields"
    return SweepPlan(stage=stage, cfg=cfg, sweep_dir=sweep_dir(cfg, stage), train_tasks=list(split.train),
                     unseen_tasks=list(split.unseen), same_seed=same, jobs=jobs, decoders=decoders,
                     expected_ipt_pt=expected_ipt, warnings=warnings, pt_records=pt_records,
                     train_digests=train_digests)


def _check_grid(cfg: IPTConfig, train: list[str], unseen: list[str]) -> tuple[list[str], list[str]]:
    """(problems, warnings) of the seeds and tasks, common to both stages."""
    sw = cfg.sweep
    problems, warnings = [], []
    if not sw.data_seeds:
        problems.append("sweep.data_seeds: give at least one data seed")
    elif len(set(sw.data_seeds)) != len(sw.data_seeds):
        problems.append(f"sweep.data_seeds: seeds repeat in {sw.data_seeds}")
    elif cfg.data.data_seed is not None and cfg.data.data_seed != sw.data_seeds[0]:
        problems.append(f"sweep.data_seeds[0] ({sw.data_seeds[0]}) must be the data seed PT and MSF used "
                        f"(data.data_seed={cfg.data.data_seed}): settings 1 and 3 use it, the others are 'new data'")
    if not sw.lrs:
        problems.append("sweep.lrs: give at least one learning rate")
    both = sorted(set(train) & set(unseen))
    if both:
        problems.append(f"tasks both seen and unseen: {', '.join(both)}")
    if len(sw.data_seeds) > 1 and cfg.data.train_size is None and cfg.data.k is None and cfg.data.format != "hf":
        warnings.append("data.train_size and data.k are unset: every data seed reads the same examples, so "
                        "seeds differ only in initialisation and data order")
    return problems, warnings


def _check_ist(cfg: IPTConfig, train: list[str], unseen: list[str],
               problems: list[str]) -> dict[int, DecoderInfo]:
    """Check the MSF checkpoints, the settings against the tasks, and the prompts settings 1-2 need."""
    sw = cfg.sweep
    settings = set(sw.settings)
    decoders: dict[int, DecoderInfo] = {}
    if not sw.dims:
        problems.append("sweep.dims: map at least one intrinsic dimension to its MSF checkpoint, "
                        "e.g. dims: {250: /abs/path/msf_d250}")
    same_draw = None
    for d, path in sorted(sw.dims.items()):
        info = _check_decoder(cfg, d, path, problems)
        if info is None:
            continue
        decoders[d] = info
        if sw.data_seeds:  # no seeds: reported by _check_grid
            same_draw = _same_draw(cfg, train) if same_draw is None else same_draw
            _check_provenance(cfg, info, same_draw, problems)
        tasks = info.meta.get("tasks")
        if tasks is not None:
            not_trained = [t for t in train if t not in tasks]
            leaked = [t for t in unseen if t in tasks]
            if not_trained:
                problems.append(f"sweep.dims[{d}]: training tasks {not_trained} were not among the MSF "
                                f"checkpoint's tasks; they would not be 'seen'")
            if leaked:
                problems.append(f"sweep.dims[{d}]: unseen tasks {leaked} were MSF training tasks")
    if not unseen and settings & {"msf_unseen", "ist_unseen"}:
        problems.append("sweep.settings asks for msf_unseen/ist_unseen but there are no unseen tasks. Fix: set "
                        "data.unseen_tasks or data.split_file, or drop those settings")
    if "ist_seen_new" in settings and len(sw.data_seeds) < 2:
        problems.append("sweep.settings asks for ist_seen_new (new data) but sweep.data_seeds has one seed. "
                        "Fix: add seeds; the first is the PT/MSF seed, the others are new data")
    if sw.ipt_init_pt and not settings & set(IST_SETTINGS):
        problems.append("sweep.ipt_init_pt needs an IST setting (its prompts start from Dec(z*) of IST)")
    need = _msf_eval_tasks(cfg, train, unseen)
    if need and decoders:
        hidden = next(iter(decoders.values())).meta.get("hidden")
        try:
            load_task_prompts(_prompts_dir(cfg), need, cfg.pt.prompt_len, hidden)
            _check_eval_prompts(cfg, need, decoders, problems)
        except ArtifactError as exc:
            problems.append(f"settings msf_seen/msf_unseen need stage-0 prompts: {exc}")
    return decoders


def _pca_tasks(info: DecoderInfo, train: list[str]) -> list[str]:
    """The tasks whose stage-0 prompts span the PCA decoder of d: the MSF checkpoint's training tasks."""
    return list(info.meta.get("tasks") or train)


def _check_pca(cfg: IPTConfig, decoders: dict[int, DecoderInfo], train: list[str],
               problems: list[str]) -> list[str]:
    """sweep.pca_decoder: the stage-0 prompts of each d's MSF training tasks must load (they are what
    the PCA is computed from, on the driver). Returns warnings: a d above the prompts' rank."""
    warnings: list[str] = []
    if not set(cfg.sweep.settings) & set(IST_SETTINGS):
        problems.append("sweep.pca_decoder needs an IST setting (ist_seen_same, ist_seen_new or ist_unseen): "
                        "the PCA decoder is a baseline of IST")
    checked: set[tuple] = set()
    for d, info in sorted(decoders.items()):
        tasks = _pca_tasks(info, train)
        key = (tuple(tasks), info.meta.get("hidden"))
        if key not in checked:
            checked.add(key)
            try:
                load_task_prompts(_prompts_dir(cfg), tasks, cfg.pt.prompt_len, info.meta.get("hidden"))
            except ArtifactError as exc:
                problems.append(f"sweep.pca_decoder (d={d}) is computed from the stage-0 prompts of the MSF "
                                f"training tasks: {exc}")
                continue
        read = (info.meta.get("provenance") or {}).get("prompts") or {}
        now = {t: prompt_digest(_prompts_dir(cfg), t) for t in tasks if t in read}
        changed = [t for t, digest in now.items() if digest is not None and digest != read[t]]
        if changed:  # MSF vs PCA is a like-for-like comparison only over the same prompts
            problems.append(f"sweep.pca_decoder (d={d}): the stage-0 prompt files of {', '.join(changed)} changed "
                            f"since MSF d={d} read them, so the PCA baseline would span other prompts than MSF was "
                            f"trained on. Fix: retrain MSF for d={d} on the current prompts, or restore the prompts "
                            "it was trained on")
        if d > len(tasks) - 1:
            warnings.append(f"sweep.pca_decoder: d={d} exceeds the rank of {len(tasks)} centred prompts "
                            f"(at most {len(tasks) - 1}); the PCA decoder's extra dimensions are zero (inert)")
    return warnings


def _check_eval_prompts(cfg: IPTConfig, need: list[str], decoders: dict[int, DecoderInfo],
                        problems: list[str]) -> None:
    """Settings 1-2 encode stage-0 prompts: tuned on setting 3's draw with this backbone, and (seen
    tasks) the very files each MSF was trained on."""
    from ipt_dist.data.tasks import DataError
    from ipt_dist.provenance import check_prompt_provenance
    from ipt_dist.stages.common import load_raw

    pdir = _prompts_dir(cfg)
    metas = {t: load_prompt(find_prompt(pdir, t))[1] for t in need}
    seed = cfg.sweep.data_seeds[0] if cfg.sweep.data_seeds else None
    try:
        same = load_raw(cfg, need, seed) if seed is not None else {}
    except DataError:
        same = {}  # reported by _check_data
    mismatches, _ = check_prompt_provenance(metas, cfg, same, seed)
    if mismatches:
        problems.append(f"settings msf_seen/msf_unseen: stage-0 prompts in {pdir} were tuned on another draw or "
                        "backbone (prompt value vs config value):" + "".join(f"\n      - {m}" for m in mismatches)
                        + "\n    Fix: the PT sweep with this config writes them (its first data seed)")
    for d, info in sorted(decoders.items()):
        read = (info.meta.get("provenance") or {}).get("prompts") or {}
        changed = [t for t in need if t in read and read[t] != prompt_digest(pdir, t)]
        if changed:
            problems.append(f"sweep.dims[{d}]: the stage-0 prompt files of {', '.join(changed)} changed since MSF "
                            f"read them (msf_seen would encode other prompts than MSF was trained on). Fix: retrain "
                            f"MSF for d={d} on the current prompts, or restore the prompts it was trained on")


def _same_draw(cfg: IPTConfig, train: list[str]) -> dict:
    """The training tasks as setting 3 loads them (data seed sweep.data_seeds[0]); {} when they do not
    load (_check_data reports why)."""
    from ipt_dist.data.tasks import DataError
    from ipt_dist.stages.common import load_raw

    try:
        return load_raw(cfg, train, cfg.sweep.data_seeds[0])
    except DataError:
        return {}


def _check_provenance(cfg: IPTConfig, info: DecoderInfo, same_draw: dict, problems: list[str]) -> None:
    """The decoder was trained on setting 3's draw (data.data_seed = sweep.data_seeds[0], same data
    content), not on one of setting 4's new draws, with this backbone (see `ipt_dist.provenance`)."""
    from ipt_dist.provenance import check_decoder_provenance, mismatch_message

    seeds = cfg.sweep.data_seeds
    same = seeds[0]
    prov = info.meta.get("provenance")
    mismatches = check_decoder_provenance(prov, cfg, same_draw, same, seeds[1:])
    if not mismatches:
        return
    d = info.d
    if prov:
        fix = (f"train MSF for d={d} on setting 3's draw with this backbone (data.data_seed = "
               f"sweep.data_seeds[0] = {same}, the config's backbone, data and pt.prompt_len; configs/msf.yaml "
               f"and configs/ist_sweep.yaml agree) and point sweep.dims[{d}] at it, or set these fields of the "
               "sweep config to the checkpoint's values")
    else:
        fix = (f"retrain MSF for d={d} with this version (ray_jobs/msf.py or ipt msf) and point sweep.dims[{d}] "
               "at it")
    problems.append(f"sweep.dims[{d}]: " + mismatch_message(info.path, mismatches, fix))


def _msf_eval_tasks(cfg: IPTConfig, train: list[str], unseen: list[str]) -> list[str]:
    settings = cfg.sweep.settings
    return (train if "msf_seen" in settings else []) + (unseen if "msf_unseen" in settings else [])


def _expand_pt(cfg: IPTConfig, train: list[str], unseen: list[str]) -> list[JobSpec]:
    """Stage 0: every task (seen and unseen) x data seed x lr."""
    ctx = _context(cfg, "pt")
    tasks = train + [u for u in unseen if u not in train]
    return [make_job(ctx, stage="pt", role="pt", kind="pt", task=t, seen=t in train, data_seed=s, lr=float(lr),
                     grad_clip=cfg.pt.grad_clip)
            for t in tasks for s in cfg.sweep.data_seeds for lr in cfg.sweep.lrs]


def _expand_ist(cfg: IPTConfig, train: list[str], unseen: list[str], decoders: dict[int, DecoderInfo],
                same: int) -> tuple[list[JobSpec], int]:
    """Settings 1-5 per d (and the random- and PCA-decoder baselines), plus plain PT beside IPT-init PT.

    Returns (jobs, number of phase-2 IPT-init PT jobs once the IST results exist).
    """
    sw = cfg.sweep
    settings = set(sw.settings)
    pdir = _prompts_dir(cfg)
    prompt_fp = {t: prompt_digest(pdir, t, 40) for t in _msf_eval_tasks(cfg, train, unseen)}
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
            if decoder == "msf":
                dec_id = info.fingerprint
            elif decoder == "random":  # the no-MSF baseline: same shapes, PyTorch's default init seeded with ist.seed
                m = info.meta
                dec_id = _digest({"random": cfg.ist.seed,
                                  "shape": [m["d"], m["prompt_len"], m["hidden"], m["mid_dim"]]})
            else:  # PCA of the stage-0 prompts: changed prompt files (or d) give new ids
                tasks = _pca_tasks(info, train)
                dec_id = _digest({"pca": d, "prompts": {t: prompt_digest(pdir, t, 40) for t in tasks}})
            common = {"stage": "ist", "d": d, "decoder": decoder,
                      "msf_run_id": info.msf_run_id if decoder == "msf" else None}
            if decoder == "msf":
                eval_ctx = {**_context(cfg, "msf_eval"), "decoder": dec_id}
                for setting, tasks in (("msf_seen", train), ("msf_unseen", unseen)):
                    if setting in settings:
                        jobs += [make_job({**eval_ctx, "prompt": prompt_fp[t]}, role="msf_eval",
                                          kind="msf_eval", task=t, seen=setting == "msf_seen", data_seed=same,
                                          setting=setting, **common) for t in tasks]
            ist_ctx = {**_context(cfg, "ist"), "decoder": dec_id}
            jobs += [make_job(ist_ctx, role="ist", kind="ist", task=t, seen=t in train, data_seed=s,
                              setting=setting, lr=float(lr), grad_clip=cfg.ist.grad_clip, **common)
                     for setting, t, s in grid for lr in (sw.ist_lrs or sw.lrs)]
    pairs = sorted({(t, s) for _, t, s in grid})
    expected_ipt = len(pairs) * len(decoders) if sw.ipt_init_pt else 0
    if sw.ipt_init_pt:  # plain PT beside IPT-initialised PT: same lr, seeds and schedule
        pt_ctx = _context(cfg, "pt")
        jobs += [make_job(pt_ctx, stage="ist", role="pt_control", kind="pt", task=t, seen=t in train,
                          data_seed=s, lr=float(cfg.pt.lr), grad_clip=cfg.pt.grad_clip) for t, s in pairs]
    return jobs, expected_ipt


def _check_pt_denominators(cfg: IPTConfig, jobs: list[JobSpec], pt_records: list[dict]) -> None:
    """Every IST / MSF-eval job on draw s of a task is divided by PT on the same task and draw
    (summary.RELATIVE_RULE): that PT result must exist before the sweep spends any compute.

    Raises:
        ConfigError: the (task, draw) pairs without a PT result at PT's chosen lr (tasks grouped
            by their missing draws) and the fix.
    """
    have = pt_scores_by_draw(pt_records)
    missing: dict[str, list] = defaultdict(list)
    for t, s in sorted({(j.task, j.data_seed) for j in jobs if j.role in ("ist", "msf_eval")}):
        if (t, s) not in have:
            missing[t].append(s)
    if not missing:
        return
    by_draws: dict[tuple, list[str]] = defaultdict(list)  # the same missing draws -> one line
    for t, draws in missing.items():
        by_draws[tuple(draws)].append(t)
    lines = [f"draws {list(d)}: {', '.join(ts[:8])}" + (f" (+{len(ts) - 8} more)" if len(ts) > 8 else "")
             for d, ts in sorted(by_draws.items(), key=lambda kv: -len(kv[1]))]
    out = Path(cfg.output_dir)
    raise ConfigError(
        f"relative performance divides each IST/MSF score on draw s by PT on the same task and draw, but "
        f"{sum(map(len, missing.values()))} (task, draw) pairs of this sweep have no stage-0 PT result "
        f"(looked in {out / 'pt_sweep' / 'results.jsonl'}, {out / 'pt' / 'results.jsonl'} and the prompt "
        f"files in {_prompts_dir(cfg)}):\n  - " + "\n  - ".join(lines) + "\n"
        f"Fix: run the PT sweep first with the same sweep.data_seeds {cfg.sweep.data_seeds} and output_dir "
        f"(python ray_jobs/pt_sweep.py --config <this config> --out {out}); `ipt quickstart` does it for you")


def _check_data(cfg: IPTConfig, jobs: list[JobSpec]) -> dict[tuple[str, int], tuple[str, int]]:
    """Load every (task, draw) of the grid once. Returns (task, data seed) -> (digest of the training
    split, its size): the draw each job trains on, named in MLflow without reading data again."""
    from ipt_dist.provenance import split_digest
    from ipt_dist.stages.common import load_raw

    by_seed: dict[int, set[str]] = defaultdict(set)
    for j in jobs:
        by_seed[j.data_seed].add(j.task)
    digests = {}
    for seed, tasks in sorted(by_seed.items()):
        raw = load_raw(cfg, sorted(tasks), seed)  # DataError lists every problem of this seed
        digests.update({(t, seed): (split_digest(d.train), len(d.train)) for t, d in raw.items()})
    return digests


def _prompts_dir(cfg: IPTConfig) -> Path:
    from ipt_dist.stages.msf import msf_prompts_dir

    return msf_prompts_dir(cfg).resolve()


def expand_ipt_pt_jobs(plan: SweepPlan, records: list[dict]) -> list[JobSpec]:
    """Phase 2: PT initialised from Dec(z*), z* = the IST job with the best dev over lrs for the same
    (task, data seed, d) with the MSF decoder. Only groups with IST results get a job."""
    if not plan.cfg.sweep.ipt_init_pt:
        return []
    cfg = plan.cfg
    ctx = _context(cfg, "pt")
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


def group_packs(jobs: list[JobSpec], pack_size: int, slots: int = 1,
                cost: Callable[[list[JobSpec]], float] | None = None) -> list[list[JobSpec]]:
    """Split jobs into packs of at most `pack_size` that share `pack_key`, in submission order.

    - Balanced: a group of n jobs becomes ceil(n / pack_size) packs of near-equal size (40 jobs at
      pack_size 32: 20 + 20, not 32 + 8, whose short pack would leave a slot idle at the end).
    - Slots filled: while there are fewer packs than `slots` (task slots the cluster runs at once),
      the largest pack is halved, so no slot idles while one pack holds many jobs.
    - Longest first: ordered by `cost` (default: pack size), largest first, so the short packs
      fill the gaps at the end (LPT scheduling).
    - Tapered: with more big packs (at least half the largest cost) than slots, the last `slots` of
      them are halved, so the final wave is finer and a slot that finishes early takes more of it:
      equal-sized packs do not take equal time (evaluation decodes to different lengths), and the
      slots idle at the end was most of the measured sweep overhead (BENCHMARKS.md).
    Deterministic for equal inputs.
    """
    if pack_size < 1:
        raise ValueError(f"pack_size must be >= 1, got {pack_size}")
    by_key: dict[tuple, list[JobSpec]] = defaultdict(list)
    for j in jobs:
        by_key[j.pack_key()].append(j)
    packs: list[list[JobSpec]] = []
    for key in sorted(by_key, key=str):
        group = sorted(by_key[key], key=lambda j: (j.task, j.data_seed, j.lr or 0.0, j.job_id))
        packs += _split_even(group, -(-len(group) // pack_size))
    while len(packs) < slots:
        big = max(range(len(packs)), key=lambda i: len(packs[i]), default=None)
        if big is None or len(packs[big]) < 2:
            break
        packs[big:big + 1] = _split_even(packs[big], 2)
    cost = cost or len
    packs.sort(key=lambda p: -cost(p))  # stable: equal costs keep the grouping order
    big = [i for i, p in enumerate(packs) if 2 * cost(p) >= cost(packs[0]) and len(p) > 1]
    if slots > 1 and len(big) > slots:  # taper: the last wave of big packs in halves
        last = set(big[-slots:])
        halves = [h for i in sorted(last) for h in _split_even(packs[i], 2)]
        packs = sorted([p for i, p in enumerate(packs) if i not in last] + halves, key=lambda p: -cost(p))
    return packs


def _split_even(group: list[JobSpec], n: int) -> list[list[JobSpec]]:
    """`group` in n contiguous parts whose sizes differ by at most one."""
    q, r = divmod(len(group), n)
    out, i = [], 0
    for k in range(n):
        size = q + (k < r)
        out.append(group[i : i + size])
        i += size
    return out


def pack_cost(cfg: IPTConfig) -> Callable[[list[JobSpec]], float]:
    """Relative cost of a pack for ordering: jobs x (training steps + 1); settings 1-2 only evaluate."""
    steps = {"ist": cfg.ist.steps, "pt": cfg.pt.steps, "msf_eval": 0}
    return lambda pack: len(pack) * (steps.get(pack[0].kind, 0) + 1)


# ----------------------------------------------------------------------------- worker side

_BACKBONES: dict[str, Any] = {}  # per worker process: reused by later packs of a reused (CPU) worker


def _cached_backbone(cfg: IPTConfig, device: torch.device):
    from ipt_dist.modeling.backbone import build_backbone

    key = json.dumps([asdict(cfg.backbone), str(device)], sort_keys=True)
    if key not in _BACKBONES:
        _BACKBONES.clear()  # one backbone per worker at a time
        _BACKBONES[key] = build_backbone(cfg.backbone, device)
    return _BACKBONES[key]


def _maybe_crash(jobs: list[JobSpec], crash: str | None) -> None:
    if not crash:
        return
    match, marker = crash.split(":", 1)
    if not any(match in (j.job_id, j.task) for j in jobs):
        return
    try:  # O_EXCL: of packs running at once, exactly one crashes, and only on its first attempt
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, f"crashed pid {os.getpid()}\n".encode())
    os.close(fd)
    os._exit(1)  # a dead worker, as on OOM-kill or a lost node; Ray retries the task


def run_pack(cfg_dict: dict, jobs: list[dict], shared: dict | None = None,
             inits: dict[str, torch.Tensor] | None = None, crash: str | None = None,
             progress: tuple | None = None) -> list[dict]:
    """Run one pack (a Ray task body; also callable in-process). Returns per job
    `{"record": dict, "param": tensor, "param_name": "z" | "prompt"}`; writes nothing.
    Each record's `worker_seconds` is its share of the whole task (backbone load, tokenisation,
    training, evaluation), `seconds` its share of training and evaluation alone, `worker` the
    host:pid that ran it.

    Args:
        cfg_dict: `config_to_dict` of the resolved config (rebuilt here, no module globals).
        jobs: `asdict(JobSpec)` of jobs sharing `pack_key`.
        shared: the frozen model part from the object store: {"meta", "decoder"} state for IST,
            {"meta", "autoencoder", "prompts"} for settings 1-2.
        inits: job_id -> initial prompt (L, H) for IPT-initialised PT jobs.
        progress: (board actor handle, pack id): training steps done / total go to the board
            (`pack_progress`), which the driver's heartbeat reads.
    """
    from ipt_dist import console

    console.setup_worker()  # this worker's logging and warnings -> <out>/logs/workers.log
    t0 = time.perf_counter()
    outs = _run_pack(cfg_dict, jobs, shared, inits, crash, progress)
    share = (time.perf_counter() - t0) / max(1, len(outs))
    worker = f"{socket.gethostname()}:{os.getpid()}"
    for out in outs:
        out["record"].update(worker_seconds=share, worker=worker)
    return outs


def _forwarder(progress: tuple | None):
    """train_pack's on_progress for a pack whose driver gave it a progress board (else None)."""
    if progress is None:
        return None
    from ipt_dist.distributed.pack_progress import ThrottledProgress

    board, pack_id = progress
    return ThrottledProgress(lambda done, total, secs: board.update.remote(pack_id, done, total, secs))


def _run_pack(cfg_dict: dict, jobs: list[dict], shared: dict | None, inits: dict[str, torch.Tensor] | None,
              crash: str | None, progress: tuple | None = None) -> list[dict]:
    from ipt_dist.stages.common import load_tokenized, pick_device

    specs = [JobSpec(**j) for j in jobs]
    _maybe_crash(specs, crash)
    cfg = config_from_dict(cfg_dict, "sweep worker config")
    device = pick_device(cfg.sweep.num_gpus > 0)
    backbone = _cached_backbone(cfg, device)
    data = {}
    by_seed: dict[int, list[JobSpec]] = defaultdict(list)
    for j in specs:
        by_seed[j.data_seed].append(j)
    for seed, js in by_seed.items():
        tok = load_tokenized(cfg, backbone, sorted({j.task for j in js}), seed)
        data.update({j.job_id: tok[j.task] for j in js})
    extra = {"backbone": backbone.name}
    kind = specs[0].kind
    if kind == "msf_eval":
        return _run_msf_eval(cfg, backbone, specs, data, shared, extra)
    from ipt_dist.train.packed import Job, settings_init_params, train_pack

    train_jobs = [Job(job_id=j.job_id, task=j.task, kind=kind, lr=j.lr, seed=j.data_seed, grad_clip=j.grad_clip,
                      params={**j.params(), **extra}) for j in specs]
    if kind == "ist":
        from ipt_dist.modeling.autoencoder import PromptDecoder
        from ipt_dist.stages.ist import ist_settings

        m = shared["meta"]
        if m["hidden"] != backbone.hidden_size:
            raise ValueError(f"MSF decoder d={m['d']} makes prompts of hidden size {m['hidden']}, the backbone "
                             f"{backbone.name} has {backbone.hidden_size}: use the checkpoint of this backbone")
        if specs[0].decoder == "pca":
            from ipt_dist.modeling.pca_decoder import PCADecoder

            decoder = PCADecoder(**shared["decoder"], prompt_len=m["prompt_len"], hidden=m["hidden"])
        else:
            decoder = PromptDecoder(m["d"], m["prompt_len"], m["hidden"], m["mid_dim"])
            decoder.load_state_dict(shared["decoder"])
        results = train_pack(backbone, train_jobs, data, ist_settings(cfg), decoder=decoder,
                             on_progress=_forwarder(progress))
        name = "z"
    else:
        from ipt_dist.stages.pt import pt_settings

        settings = pt_settings(cfg)
        shape = (cfg.pt.prompt_len, backbone.hidden_size)
        init = None
        if inits:
            rows = []
            for j in train_jobs:
                if j.job_id in inits:
                    p = inits[j.job_id].float()
                    if tuple(p.shape) != shape:
                        raise ValueError(f"job {j.job_id}: initial prompt shape {tuple(p.shape)} != {shape}")
                    rows.append(p)
                else:  # plain PT in the same pack: its own seeded init, as when alone
                    rows.append(settings_init_params(backbone, [j], shape, settings, "pt")[0])
            init = torch.stack(rows)  # (K, L, H)
        results = train_pack(backbone, train_jobs, data, settings, prompt_len=cfg.pt.prompt_len, init=init,
                             on_progress=_forwarder(progress))
        name = "prompt"
    return [{"record": r.record(), "param": r.best_param.contiguous(), "param_name": name} for r in results]


def _run_msf_eval(cfg, backbone, specs: list[JobSpec], data: dict, shared: dict, extra: dict) -> list[dict]:
    """Settings 1-2: score Dec(Enc(P_i)) on dev and test; the 'learned' vector is Enc(P_i)."""
    from ipt_dist.modeling.autoencoder import PromptAutoencoder
    from ipt_dist.stages.msf import evaluate_reconstructed

    t0 = time.time()
    m = shared["meta"]
    if m["hidden"] != backbone.hidden_size:
        raise ValueError(f"MSF checkpoint d={m['d']} has hidden size {m['hidden']}, backbone has "
                         f"{backbone.hidden_size}")
    ae = PromptAutoencoder(m["d"], m["prompt_len"], m["hidden"], m["mid_dim"])
    ae.load_state_dict(shared["autoencoder"])
    ae = ae.to(backbone.device).eval()
    prompts = torch.stack([shared["prompts"][j.task] for j in specs]).float()  # (K, L, H)
    tasks = [data[j.job_id] for j in specs]
    bs = cfg.backbone.eval_batch_size
    dev = evaluate_reconstructed(backbone, ae, prompts, tasks, "dev", bs)
    test = evaluate_reconstructed(backbone, ae, prompts, tasks, "test", bs)
    with torch.no_grad():
        z = ae.encode(prompts.to(backbone.device)).cpu()  # (K, d)
    secs = (time.time() - t0) / len(specs)
    out = []
    for k, j in enumerate(specs):
        rec = {"job_id": j.job_id, "task": j.task, "kind": j.kind, "lr": None, "seed": j.data_seed,
               **j.params(), **extra, "metric": tasks[k].info.metric, "best_dev": dev[k], "best_step": None,
               "test": test[k], "dev_curve": [], "loss_curve": [], "seconds": secs}
        out.append({"record": rec, "param": z[k].contiguous(), "param_name": "z"})
    return out


# ----------------------------------------------------------------------------- smoke test


def prepare_smoke(cfg: IPTConfig, stage: str) -> IPTConfig:
    """Build what a smoke IST sweep needs: the stage-0 PT sweep (every task x data seed x lr, as
    `ipt quickstart` runs it: the PT denominator of every draw, and the prompt files) and one MSF
    checkpoint per d (`run_msf`, single process). Both skip work already on disk, so a second
    smoke run trains nothing."""
    cfg = prepare_config(cfg)
    if stage == "pt":
        return cfg
    from ipt_dist.stages.msf import run_msf

    out = Path(cfg.output_dir)
    if _prompts_dir(cfg) != out / "prompts":
        raise ConfigError(f"--smoke-test writes the stage-0 prompts to {out / 'prompts'} (PT sweep), but "
                          f"msf.prompts_dir is {cfg.msf.prompts_dir}: unset it for a smoke test")
    pt = run_sweep(cfg, "pt")  # prompt files already there (from an earlier smoke run or ipt pt) are kept
    if pt.jobs_failed:
        from ipt_dist.errors import StageFailed

        raise StageFailed(f"smoke test: {pt.jobs_failed} stage-0 PT jobs failed ({pt.sweep_dir / 'failures.jsonl'}); "
                          "run the same command again to retry them")
    dims = cfg.sweep.dims or {cfg.msf.d: str(out / f"msf_d{cfg.msf.d}")}
    for d, path in sorted(dims.items()):
        ckpt = Path(path)
        if (ckpt / "msf.json").is_file():
            continue
        log.info("smoke test: training MSF d=%d into %s", d, ckpt)
        work = out / "smoke_work" / f"msf_d{d}"
        cfg_d = config_from_dict(config_to_dict(cfg), "smoke msf config")
        cfg_d.output_dir, cfg_d.msf.d, cfg_d.msf.prompts_dir = str(work), d, str(_prompts_dir(cfg))
        cfg_d.tracking.enabled = False
        run_msf(cfg_d)
        if ckpt.exists():
            shutil.rmtree(ckpt)
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        (work / "msf").rename(ckpt)
    cfg.sweep.dims = dict(dims)
    return cfg


# ----------------------------------------------------------------------------- driver


def _save_param(path: Path, name: str, tensor: torch.Tensor, meta: dict) -> None:
    from safetensors.torch import save

    atomic_write_bytes(path, save({name: tensor.detach().float().contiguous().cpu()},
                                  metadata={k: json.dumps(v) for k, v in meta.items()}))


def _load_param(path: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    return next(iter(tensors.values()))


class _Progress:
    """jobs done / total, failures and ETA in the driver log."""

    def __init__(self, stage: str, total: int, skipped: int) -> None:
        self.stage, self.total, self.skipped = stage, total, skipped
        self.done = self.failed = 0
        self.t0 = time.time()

    def report(self, in_flight: int, partial: float = 0.0, packs: str = "") -> None:
        """One progress line. `partial`: jobs' worth of steps done inside running packs (the ETA
        counts them, so it is known before the first pack ends); `packs`: their steps and ETAs."""
        finished = self.skipped + self.done
        elapsed = time.time() - self.t0
        todo = self.total - finished - self.failed
        worked = self.done + partial
        eta = fmt_secs(elapsed / worked * max(0.0, todo - partial)) if worked > 0 else "?"
        log.info("%s sweep: %d/%d jobs done (%d this run, %d skipped), %d failed, %d packs running, "
                 "elapsed %s, ETA %s%s", self.stage, finished, self.total, self.done, self.skipped, self.failed,
                 in_flight, fmt_secs(elapsed), eta, f" | {packs}" if packs else "")


def init_ray(cfg: IPTConfig):
    """Join (or start) Ray once per driver process, for the sweeps and distributed MSF alike: the
    console's options (`ipt_dist.console.ray_init_options`: worker output forwarded only with
    --verbose, the workers' log directory) and the caller's SIGTERM handler kept. Returns `ray`."""
    import ray

    from ipt_dist import console

    if not ray.is_initialized():
        # A Ray started here inherits this environment: make the package importable by workers
        # even when it is not pip-installed (a cluster job gets it from --working-dir).
        root = str(Path(__file__).resolve().parents[2])
        paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
        if root not in paths:
            os.environ["PYTHONPATH"] = os.pathsep.join([root] + [p for p in paths if p])
        handler = signal.getsignal(signal.SIGTERM)
        console.adopt_loggers("ray")  # quiet: Ray's driver messages (dashboard URL, token auth) -> the log file
        ray.init(address=cfg.distributed.ray_address, **console.ray_init_options())
        # ray.init installs a SIGTERM handler that aborts the driver; keep the caller's (the entry
        # points turn `ray job stop` into a clean shutdown that closes the MLflow run as KILLED).
        if callable(handler) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, handler)
    return ray


class PackRunner:
    """Body of the Ray actors that run a GPU sweep's packs: one per task slot, each holding its
    GPU(s) and its cached backbone for the whole fan-out, so a pack pays no process start, CUDA
    initialisation or backbone load. (Ray tasks cannot do this on GPUs: a reused task worker keeps
    the CUDA device it first initialised whatever GPU Ray assigns its next task, so Ray gives GPU
    functions a fresh process per call.)"""

    def run(self, cfg_dict: dict, jobs: list[dict], shared: dict | None = None,
            inits: dict[str, torch.Tensor] | None = None, crash: str | None = None,
            progress: tuple | None = None) -> list[dict]:
        return run_pack(cfg_dict, jobs, shared, inits, crash, progress)


class _Fanout:
    """Packs onto Ray: plain tasks on CPUs (workers are reused and keep their backbone cached),
    a pool of `slots` `PackRunner` actors on GPUs. Puts each frozen model part once."""

    def __init__(self, plan: SweepPlan, ray, crash: str | None, slots: int) -> None:
        self.plan, self.ray, self.crash, self.slots = plan, ray, crash, slots
        sw = plan.cfg.sweep
        self.use_actors = sw.num_gpus > 0
        if self.use_actors:  # a dead actor is restarted (no limit) and its pack retried up to max_retries times
            self.actor_cls = ray.remote(PackRunner).options(num_cpus=sw.num_cpus, num_gpus=sw.num_gpus,
                                                            max_restarts=-1, max_task_retries=sw.max_retries)
            self.idle: deque = deque()
            self.busy: dict[Any, Any] = {}  # ObjectRef -> actor
            self.n_actors = 0
        else:
            self.remote = ray.remote(run_pack).options(num_cpus=sw.num_cpus, num_gpus=0,
                                                       max_retries=sw.max_retries, retry_exceptions=False)
        self.cfg_dict = config_to_dict(plan.cfg)
        self.cfg_ref = ray.put(self.cfg_dict)
        self.refs: dict[tuple, Any] = {}  # (what, d) -> ObjectRef, each put once
        self._autoencoders: dict[int, Any] = {}
        self.packs: dict[Any, tuple[int, str, int]] = {}  # ObjectRef -> (pack id, label, jobs)
        try:  # steps of the running packs for the heartbeat; best effort, as everything about progress
            from ipt_dist.distributed.pack_progress import PackProgressBoard

            self.board = ray.remote(PackProgressBoard).options(num_cpus=0).remote()
        except Exception as exc:  # noqa: BLE001
            log.warning("no progress inside packs (the progress board did not start: %s)", exc)
            self.board = None

    def can_submit(self) -> bool:
        if not self.use_actors or self.idle:
            return True
        if self.n_actors >= self.slots:
            return False
        # A new actor replaces one lost with its node only where it fits now: while other actors
        # live, a pack waits for one of them rather than for a node that may never come back.
        return self.n_actors == 0 or self._fits_one_more()

    def _fits_one_more(self) -> bool:
        sw, free = self.plan.cfg.sweep, self.ray.available_resources()
        return free.get("GPU", 0) >= sw.num_gpus and free.get("CPU", 0) >= sw.num_cpus

    def submit(self, pack: list[JobSpec]):
        pack_id = len(self.packs) + 1
        progress = (self.board, pack_id) if self.board is not None and pack[0].kind != "msf_eval" else None
        args = (self.cfg_ref, [asdict(j) for j in pack], self.shared_ref(pack[0]), self.inits(pack), self.crash,
                progress)
        if not self.use_actors:
            ref = self.remote.remote(*args)
        else:
            if self.idle:
                actor = self.idle.popleft()
            else:
                actor = self.actor_cls.remote()
                self.n_actors += 1
            ref = actor.run.remote(*args)
            self.busy[ref] = actor
        self.packs[ref] = (pack_id, f"{pack[0].kind} x{len(pack)}", len(pack))
        return ref

    def pack_progress(self, refs: list) -> tuple[float, str]:
        """(jobs' worth of steps done inside the packs `refs`, their steps / ETA for the log line)."""
        if self.board is None:
            return 0.0, ""
        from ipt_dist.distributed.pack_progress import describe_packs, partial_jobs

        try:
            snapshot = self.ray.get(self.board.snapshot.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - a slow or lost board only costs the step counts
            return 0.0, ""
        mine = [self.packs[r] for r in refs if r in self.packs]
        running = {pid: snapshot[pid] for pid, _, _ in mine if pid in snapshot}
        return (partial_jobs(running, {pid: n for pid, _, n in mine}),
                describe_packs(running, {pid: label for pid, label, _ in mine}))

    def done(self, ref, exc: Exception | None = None) -> None:
        """A pack finished (or failed): its actor takes the next one, unless it died for good."""
        if not self.use_actors:
            return
        actor = self.busy.pop(ref)
        if isinstance(exc, self.ray.exceptions.RayActorError):
            self.ray.kill(actor, no_restart=True)
            self.n_actors -= 1  # the next submit starts a fresh one
        else:
            self.idle.append(actor)

    def close(self, cancel: list | None = None) -> None:
        """Cancel what is in flight and release the actors (and their GPUs) and the progress board."""
        if self.board is not None:
            self.ray.kill(self.board, no_restart=True)
            self.board = None
        if not self.use_actors:
            for ref in cancel or []:
                self.ray.cancel(ref, force=True)
            return
        for actor in [*self.idle, *self.busy.values()]:
            self.ray.kill(actor, no_restart=True)
        self.idle.clear()
        self.busy.clear()
        self.n_actors = 0

    def autoencoder(self, d: int):
        if d not in self._autoencoders:
            info = self.plan.decoders[d]
            ae, _ = load_msf_checkpoint(info.path, prompt_len=self.plan.cfg.pt.prompt_len)
            self._autoencoders[d] = ae.eval()
        return self._autoencoders[d]

    def shared_ref(self, job: JobSpec):
        if job.kind == "pt":
            return None
        key = (job.kind, job.d, job.decoder)
        if key not in self.refs:
            meta = dict(self.plan.decoders[job.d].meta)
            ae = self.autoencoder(job.d)
            if job.kind == "msf_eval":
                tasks = self.plan.train_tasks + self.plan.unseen_tasks
                prompts = {}
                for t in tasks:
                    p = find_prompt(_prompts_dir(self.plan.cfg), t)
                    if p.exists():
                        prompts[t] = load_prompt(p)[0]
                obj = {"meta": meta, "autoencoder": ae.state_dict(), "prompts": prompts}
            elif job.decoder == "random":
                from ipt_dist.modeling.autoencoder import random_decoder

                dec = random_decoder(meta["d"], meta["prompt_len"], meta["hidden"], meta["mid_dim"],
                                     seed=self.plan.cfg.ist.seed)
                obj = {"meta": meta, "decoder": dec.state_dict()}
            elif job.decoder == "pca":  # computed here, once per d, from the prompts the job ids digest
                from ipt_dist.modeling.pca_decoder import pca_decoder

                tasks = _pca_tasks(self.plan.decoders[job.d], self.plan.train_tasks)
                prompts = load_task_prompts(_prompts_dir(self.plan.cfg), tasks, meta["prompt_len"], meta["hidden"])
                obj = {"meta": meta, "decoder": pca_decoder(prompts, job.d).state_dict()}
            else:
                obj = {"meta": meta, "decoder": ae.decoder.state_dict()}
            self.refs[key] = self.ray.put(obj)  # once per (kind, d, decoder): workers share it
        return self.refs[key]

    def inits(self, pack: list[JobSpec]) -> dict[str, torch.Tensor] | None:
        out = {}
        for j in pack:
            if j.role == "ipt_pt":
                z = _load_param(self.plan.sweep_dir / "params" / f"{j.z_source}.safetensors")
                with torch.no_grad():
                    out[j.job_id] = self.autoencoder(j.d).decoder(z.view(1, -1).float())[0]  # (L, H)
        return out or None


def run_sweep(cfg: IPTConfig, stage: str = "ist", smoke_test: bool = False) -> SweepResult:
    """Run (or resume) a PT or IST sweep on Ray; returns counts and the summary.

    Re-running with the same output_dir skips every job in `results.jsonl` and creates no
    duplicate MLflow runs; MLflow is first caught up from the results file.

    Raises:
        ConfigError / DataError: see `plan_sweep` (raised before Ray starts).
    """
    if smoke_test:
        cfg = prepare_smoke(cfg, stage)
    t_start = time.perf_counter()
    timings = {"prepare": 0.0, "packs": 0.0, "finish": 0.0}
    plan = plan_sweep(cfg, stage)
    cfg = plan.cfg
    sdir = ensure_writable_dir(plan.sweep_dir)
    for w in plan.warnings:
        log.warning("%s", w)
    results_file = sdir / "results.jsonl"
    _repair_torn_line(results_file)
    done = {r["job_id"]: r for r in read_jsonl(results_file)}
    _refuse_stale_results(plan, done, sdir)
    (sdir / "jobs.jsonl").write_text("".join(json.dumps(asdict(j)) + "\n" for j in plan.jobs))
    from ipt_dist.config import save_config
    from ipt_dist.distributed.sweep_tracking import make_sweep_tracker

    save_config(cfg, sdir / "config.yaml")
    tracker = make_sweep_tracker(cfg, stage, sdir)
    tracker.use_train_digests(cfg, plan.train_digests)
    tracker.start(cfg)
    pt_records = plan.pt_records
    pt_scores = pt_scores_by_draw(pt_records)  # (task, draw) -> PT test: each child's `relative`
    tracker.catch_up(list(done.values()), sdir / "params", pt_scores)

    total = len(plan.jobs) + plan.expected_ipt_pt
    todo = [j for j in plan.jobs if j.job_id not in done]
    progress = _Progress(stage, total, skipped=len(plan.jobs) - len(todo))
    failed: list[str] = []
    started = 0
    status = "FAILED"
    ray = None
    timings["prepare"] = time.perf_counter() - t_start
    try:
        for phase in (1, 2):
            if phase == 2:  # IPT-initialised PT starts from Dec(z*): it needs the IST results
                if stage != "ist" or not cfg.sweep.ipt_init_pt:
                    break
                extra = expand_ipt_pt_jobs(plan, list(done.values()))
                if len(extra) < plan.expected_ipt_pt:
                    log.warning("IPT-initialised PT: %d of %d jobs can run (the others lack IST results)",
                                len(extra), plan.expected_ipt_pt)
                with open(sdir / "jobs.jsonl", "a") as f:
                    f.write("".join(json.dumps(asdict(j)) + "\n" for j in extra))
                todo = [j for j in extra if j.job_id not in done]
                progress.total = len(plan.jobs) + len(extra)
                progress.skipped += len(extra) - len(todo)
            if todo:
                if ray is None:
                    t_ray = time.perf_counter()
                    ray = init_ray(cfg)
                    timings["prepare"] += time.perf_counter() - t_ray
                log.info("%s sweep: %d jobs to run in %s (%d already done); pack_size %d, max_in_flight %d",
                         stage, len(todo), sdir, progress.skipped + progress.done, cfg.sweep.pack_size,
                         cfg.sweep.max_in_flight)
                started += len(todo)
                t_packs = time.perf_counter()
                _fan_out(plan, ray, todo, done, results_file, tracker, progress, failed, pt_scores)
                timings["packs"] += time.perf_counter() - t_packs
        total = progress.total
        status = "FINISHED" if not failed else "FAILED"
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        log.warning("%s sweep interrupted: in-flight packs cancelled; re-submit to resume", stage)
        raise
    finally:
        t_finish = time.perf_counter()
        records = list(done.values())
        try:
            summary = _write_summary(plan, records, pt_records)
        except OSError as exc:  # e.g. the disk filled up: keep the error that stopped the sweep visible
            log.error("%s sweep: summary not written (%s); `ipt report` or a re-run writes it", stage, exc)
            summary = None
        counts = {"jobs_total": total, "jobs_done": progress.skipped + progress.done, "jobs_failed": len(failed),
                  "jobs_started": started}
        tracker.finish(status, summary, sdir, counts)
        timings["finish"] = time.perf_counter() - t_finish
        timings["total"] = time.perf_counter() - t_start
    if not started:
        progress.report(0)
    log.info("%s sweep: %d jobs run in %s (prepare %s, packs %s, summary and tracking %s)", stage, started,
             fmt_secs(timings["total"]), fmt_secs(timings["prepare"]), fmt_secs(timings["packs"]),
             fmt_secs(timings["finish"]))
    return SweepResult(stage=stage, sweep_dir=sdir, jobs_total=total, jobs_started=started,
                       jobs_skipped=progress.skipped, jobs_failed=len(failed), failed_job_ids=failed,
                       summary=summary, parent_run_id=tracker.parent_run_id, timings=timings)


def _refuse_stale_results(plan: SweepPlan, done: dict, sdir: Path) -> None:
    """Results this plan would not produce come from another configuration of the same sweep
    directory: mixing them would mix two grids in the summary's inputs and in one MLflow parent run.
    Growing a sweep (more lrs, seeds, tasks or dims) is fine: all earlier jobs are still planned.

    Raises:
        ConfigError: before any work, naming what changed and the fix; nothing is deleted.
    """
    planned = {j.job_id for j in plan.jobs}
    stale = [r for r in done.values() if r["job_id"] not in planned and r.get("role") != "ipt_pt"]
    if not stale:
        return
    changed = ""
    old_cfg = sdir / "config.yaml"
    if old_cfg.is_file():
        from ipt_dist.config import describe_changes, flatten_config, load_config

        try:
            before, now = flatten_config(load_config(old_cfg)), flatten_config(plan.cfg)
            before.pop("output_dir", None)
            now.pop("output_dir", None)
            diff = describe_changes(before, now)
            if diff:
                changed = f" Changed since: {diff}."
        except Exception:  # noqa: BLE001 - the diff is a hint only
            pass
    raise ConfigError(
        f"{sdir / 'results.jsonl'} holds {len(stale)} results this configuration does not plan (e.g. "
        f"{stale[0]['job_id']}, task {stale[0].get('task')}): they come from another configuration of this "
        f"{plan.stage} sweep.{changed} Fix: run this configuration with another output_dir (--out), or move "
        f"{sdir} away. Adding lrs, seeds, tasks or dims to a sweep is fine: its earlier results are reused")


def _check_resources(ray, sw) -> None:
    """A task asking for more than any node has would wait forever: say so instead."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for name, need in (("CPU", sw.num_cpus), ("GPU", sw.num_gpus)):
        if need > 0 and not any(r.get(name, 0) >= need for r in nodes):
            have = sorted({r.get(name, 0) for r in nodes})
            raise ConfigError(f"sweep.num_{name.lower()}s={need}: no node of this Ray cluster has that many "
                              f"{name}s (nodes have {have}). Fix: lower sweep.num_{name.lower()}s or add nodes")


def task_slots(ray, sw) -> int:
    """Packs the cluster runs at once: max_in_flight, capped by its CPUs / GPUs per task."""
    res = ray.cluster_resources()
    n = sw.max_in_flight
    for name, need in (("CPU", sw.num_cpus), ("GPU", sw.num_gpus)):
        if need > 0:
            n = min(n, int(res.get(name, 0) // need))
    return max(1, n)


def _sizes(packs) -> str:
    sizes = sorted((len(p) for p in packs), reverse=True)
    return ", ".join(map(str, sizes[:8])) + (f", ... ({len(sizes)} packs)" if len(sizes) > 8 else "")


def _repair_torn_line(path: Path) -> None:
    """A driver killed mid-append leaves a last line without newline: end it so the next
    append starts a fresh line (read_jsonl skips the torn one; that job simply runs again)."""
    if path.is_file() and path.stat().st_size:
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")


def _fan_out(plan: SweepPlan, ray, todo: list[JobSpec], done: dict, results_file: Path, tracker,
             progress: _Progress, failed: list[str], pt_scores: dict) -> None:
    """Submit packs with at most max_in_flight in flight; store each result as it arrives."""
    sw = plan.cfg.sweep
    _check_resources(ray, sw)
    crash = os.environ.get(CRASH_ENV)
    slots = task_slots(ray, sw)
    fan = _Fanout(plan, ray, crash, slots)
    pending = deque(group_packs(todo, sw.pack_size, slots, pack_cost(plan.cfg)))
    in_flight: dict[Any, list[JobSpec]] = {}
    lost: Counter = Counter()  # first job id -> times its pack's actor was lost
    log.info("%s sweep: %d packs (sizes %s) on %d task slots", plan.stage, len(pending),
             _sizes(pending), slots)
    last_report = time.time()

    def refill() -> None:
        while pending and len(in_flight) < sw.max_in_flight and fan.can_submit():
            pack = pending.popleft()
            in_flight[fan.submit(pack)] = pack

    try:
        refill()
        while in_flight:
            if time.time() - last_report > HEARTBEAT_S:  # heartbeat while nothing finishes
                progress.report(len(in_flight), *fan.pack_progress(list(in_flight)))
                last_report = time.time()
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=WAIT_S)
            finished = []
            for ref in ready:
                try:
                    outs, exc = ray.get(ref), None
                except Exception as err:  # noqa: BLE001 - a failed pack must not stop the sweep
                    outs, exc = None, err
                fan.done(ref, exc)
                pack = in_flight.pop(ref)
                if fan.use_actors and isinstance(exc, ray.exceptions.RayActorError) and \
                        lost[pack[0].job_id] < sw.max_retries:
                    # Its actor is gone for good (e.g. with its node: Ray's own call retries are used
                    # up while the node is only "unavailable"): run the pack again on another actor.
                    lost[pack[0].job_id] += 1
                    log.warning("%s sweep: the actor of a pack of %d jobs (%s) was lost (%s); running it "
                                "again", plan.stage, len(pack), pack[0].job_id, type(exc).__name__)
                    pending.appendleft(pack)
                    continue
                finished.append((pack, outs, exc))
            refill()  # first: a freed slot must not wait for the driver's bookkeeping (files, MLflow)
            for pack, outs, exc in finished:
                if exc is not None:
                    _record_failure(plan, pack, exc, failed, progress)
                    continue
                for out in outs:
                    _store(plan, out, done, results_file, tracker, pt_scores)
                progress.done += len(outs)
            if ready:
                tracker.retry_pending()
                tracker.log_progress(progress.skipped + progress.done, progress.failed, progress.total)
                progress.report(len(in_flight))
                last_report = time.time()
    except BaseException:
        fan.close(cancel=list(in_flight))  # do not leave orphaned work behind on Ctrl-C or a driver error
        raise
    fan.close()


def _record_failure(plan: SweepPlan, pack: list[JobSpec], exc: Exception, failed: list[str],
                    progress: _Progress) -> None:
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


def _store(plan: SweepPlan, out: dict, done: dict, results_file: Path, tracker, pt_scores: dict) -> None:
    """Param file first, then the results line (a line implies its param file), then MLflow."""
    rec = dict(out["record"])
    job_id = rec["job_id"]
    ppath = plan.sweep_dir / "params" / f"{job_id}.safetensors"
    meta = {"job_id": job_id, "task": rec["task"], "role": rec.get("role"), "backbone": rec.get("backbone")}
    _save_param(ppath, out["param_name"], out["param"], meta)
    rec["param_file"] = str(ppath.relative_to(plan.sweep_dir))
    append_jsonl(results_file, rec)
    done[job_id] = rec
    tracker.log_job(rec, ppath, pt_scores.get((rec["task"], rec.get("data_seed"))))


# ----------------------------------------------------------------------------- results


def _pt_baseline_records(cfg: IPTConfig) -> list[dict]:
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
    pdir = _prompts_dir(cfg)
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


def _write_summary(plan: SweepPlan, records: list[dict], pt_records: list[dict]) -> Summary:
    sdir = plan.sweep_dir
    # Results of jobs no longer in the grid (an lr dropped from the config, an IPT-init PT from an
    # earlier z*) stay in results.jsonl but not in the summary.
    job_ids = {j.job_id for j in plan.jobs} | {j.job_id for j in expand_ipt_pt_jobs(plan, records)}
    mine = [r for r in records if r["job_id"] in job_ids]
    if plan.stage == "pt":
        summary = summarize_pt(mine, plan.train_tasks, plan.unseen_tasks)
        _write_stage0_prompts(plan, mine)
    else:
        summary = summarize_ist(mine, pt_records, plan.train_tasks, plan.unseen_tasks)
    (sdir / "summary.md").write_text(summary.to_markdown())
    summary.write_csv(sdir / "summary.csv", sdir / "summary_settings.csv")
    (sdir / "summary.json").write_text(json.dumps(summary.to_dict(), indent=1, default=str))
    return summary


def _write_stage0_prompts(plan: SweepPlan, records: list[dict]) -> None:
    """P_i of each task: the best-dev lr at the PT/MSF data seed, written as the prompt file MSF reads."""
    from ipt_dist.provenance import prompt_provenance
    from ipt_dist.stages.common import load_raw

    pdir = _prompts_dir(plan.cfg)
    by_task: dict[str, list[dict]] = defaultdict(list)
    mine = {r["job_id"] for r in records}
    for r in records:
        if r.get("role") == "pt" and r.get("data_seed") == plan.same_seed:
            by_task[r["task"]].append(r)
    for t, rs in sorted(by_task.items()):
        sel = select_best_lr(rs)
        best = next(r for r in rs if r["job_id"] == sel.job_ids[0])
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
        prompt = _load_param(plan.sweep_dir / best["param_file"])
        task = load_raw(plan.cfg, [t], plan.same_seed)[t]  # as PT trained on it: the prompt's provenance
        save_prompt(path, prompt, backbone=best.get("backbone"), task=t, metric=best.get("metric"),
                    dev_score=best.get("best_dev"), test_score=best.get("test"), lr=best.get("lr"),
                    seed=best.get("data_seed"), data_seed=best.get("data_seed"), job_id=best["job_id"],
                    provenance=prompt_provenance(plan.cfg, task, plan.same_seed))
    if by_task:
        log.info("stage 0: wrote %d prompt files (best lr by dev, data seed %d) to %s", len(by_task),
                 plan.same_seed, pdir)

