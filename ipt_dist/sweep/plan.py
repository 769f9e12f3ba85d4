"""Validation and planning of a sweep: `plan_sweep` checks everything a sweep needs (seeds, tasks,
data files, MSF checkpoints and their provenance, stage-0 prompts, PT denominators) and expands the
grid into `JobSpec`s. Every user error is raised here, before Ray starts or a backbone loads.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path

from ipt_dist.artifacts import ArtifactError, find_prompt, load_prompt, load_task_prompts, read_msf_meta
from ipt_dist.config import ConfigError, IPTConfig, config_from_dict, config_to_dict
from ipt_dist.data.selection import load_raw, resolve_tasks
from ipt_dist.paths import absolutize, data_dir
from ipt_dist.provenance import prompt_digest
from ipt_dist.summary import pt_scores_by_draw
from ipt_dist.sweep.grid import expand_ist, expand_pt, msf_eval_tasks, pca_tasks
from ipt_dist.sweep.jobs import (
    IST_SETTINGS,
    STAGES,
    DecoderInfo,
    JobSpec,
    SweepPlan,
    digest,
    prompts_dir,
    sweep_dir,
)
from ipt_dist.sweep.results import pt_baseline_records

__all__ = ["check_data_files", "plan_sweep", "prepare_config", "refuse_stale_results"]

log = logging.getLogger(__name__)


def prepare_config(cfg: IPTConfig) -> IPTConfig:
    """A copy with absolute paths: output_dir, data_dir (demo tasks written if none is given),
    split/tasks files and msf.prompts_dir are taken relative to the current directory;
    sweep.dims relative to output_dir (where `--smoke-test` trains them)."""
    from ipt_dist.modeling.backbone import resolve_auto_dtype

    cfg = config_from_dict(config_to_dict(cfg), "sweep config")
    cfg = resolve_auto_dtype(cfg, "cuda" if cfg.sweep.num_gpus > 0 else "cpu")  # where the packs run
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") and not Path(cfg.output_dir).expanduser().is_absolute():
        log.warning("output_dir %r is relative and this driver runs under `ray job submit`, in a temporary "
                    "copy of --working-dir: results would be lost with it. Pass an absolute --out", cfg.output_dir)
    cfg = absolutize(cfg)  # ipt_dist.paths: the one rule (cwd-relative paths; sweep.dims against output_dir)
    if cfg.data.format != "hf":
        cfg.data.data_dir = str(data_dir(cfg).resolve())  # the demo tasks are written when none is given
    return cfg


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
    return DecoderInfo(d=d, path=ckpt, meta=meta, fingerprint=digest(meta), msf_run_id=run_id)


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
        jobs, expected_ipt = expand_pt(cfg, split.train, split.unseen), 0
    else:
        jobs, expected_ipt = expand_ist(cfg, split.train, split.unseen, decoders, same)
    train_digests = check_data_files(cfg, jobs) if check_data and cfg.data.format != "hf" else {}
    pt_records = []
    if stage == "ist":
        pt_records = pt_baseline_records(cfg)
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
    need = msf_eval_tasks(cfg, train, unseen)
    if need and decoders:
        hidden = next(iter(decoders.values())).meta.get("hidden")
        try:
            load_task_prompts(prompts_dir(cfg), need, cfg.pt.prompt_len, hidden)
            _check_eval_prompts(cfg, need, decoders, problems)
        except ArtifactError as exc:
            problems.append(f"settings msf_seen/msf_unseen need stage-0 prompts: {exc}")
    return decoders


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
        tasks = pca_tasks(info, train)
        key = (tuple(tasks), info.meta.get("hidden"))
        if key not in checked:
            checked.add(key)
            try:
                load_task_prompts(prompts_dir(cfg), tasks, cfg.pt.prompt_len, info.meta.get("hidden"))
            except ArtifactError as exc:
                problems.append(f"sweep.pca_decoder (d={d}) is computed from the stage-0 prompts of the MSF "
                                f"training tasks: {exc}")
                continue
        read = (info.meta.get("provenance") or {}).get("prompts") or {}
        now = {t: prompt_digest(prompts_dir(cfg), t) for t in tasks if t in read}
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

    pdir = prompts_dir(cfg)
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
        f"files in {prompts_dir(cfg)}):\n  - " + "\n  - ".join(lines) + "\n"
        f"Fix: run the PT sweep first with the same sweep.data_seeds {cfg.sweep.data_seeds} and output_dir "
        f"(python ray_jobs/pt_sweep.py --config <this config> --out {out}); `ipt quickstart` does it for you")


def check_data_files(cfg: IPTConfig, jobs: list[JobSpec]) -> dict[tuple[str, int], tuple[str, int]]:
    """Load every (task, draw) of the grid once. Returns (task, data seed) -> (digest of the training
    split, its size): the draw each job trains on, named in MLflow without reading data again."""
    from ipt_dist.provenance import split_digest

    by_seed: dict[int, set[str]] = defaultdict(set)
    for j in jobs:
        by_seed[j.data_seed].add(j.task)
    digests = {}
    for seed, tasks in sorted(by_seed.items()):
        raw = load_raw(cfg, sorted(tasks), seed)  # DataError lists every problem of this seed
        digests.update({(t, seed): (split_digest(d.train), len(d.train)) for t, d in raw.items()})
    return digests


def refuse_stale_results(plan: SweepPlan, done: dict, sdir: Path) -> None:
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
        except Exception:  # noqa: BLE001, S110 - the diff is a hint only
            pass
    raise ConfigError(
        f"{sdir / 'results.jsonl'} holds {len(stale)} results this configuration does not plan (e.g. "
        f"{stale[0]['job_id']}, task {stale[0].get('task')}): they come from another configuration of this "
        f"{plan.stage} sweep.{changed} Fix: run this configuration with another output_dir (--out), or move "
        f"{sdir} away. Adding lrs, seeds, tasks or dims to a sweep is fine: its earlier results are reused")
