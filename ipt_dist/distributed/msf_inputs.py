"""Distributed MSF, the inputs: paths made absolute for workers on other nodes, and every input
checked in the driver before any worker starts (config, DeepSpeed config, tasks, data, prompts).

No ray here: the driver (`msf_driver`) calls these before Ray starts.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from ipt_dist import paths
from ipt_dist.artifacts import ArtifactError, load_task_prompts
from ipt_dist.config import IPTConfig
from ipt_dist.distributed.deepspeed_config import DeepSpeedConfigError, build_ds_config
from ipt_dist.errors import UserError
from ipt_dist.modeling.backbone import configured_hidden_size
from ipt_dist.paths import msf_dist_dir
from ipt_dist.provenance import backbone_name, check_msf_prompts, msf_provenance
from ipt_dist.rerun import msf_inputs

log = logging.getLogger(__name__)

RUN_FILE = "run.json"  # in dist_dir: Ray run name + MLflow run id (what `--resume` continues)


class MSFInputError(UserError):
    """Inputs of a distributed MSF run are unusable; the message lists every problem and its fix."""


# ==================================================================================== paths


def dist_dir(cfg: IPTConfig) -> Path:
    """`<output_dir>/msf_dist`: run record, history and summary of distributed MSF."""
    return msf_dist_dir(cfg)


def absolutize(cfg: IPTConfig) -> IPTConfig:
    """`ipt_dist.paths.absolutize`, plus what the workers must see spelled out: the concrete
    backbone dtype of the device they run on, the prompts directory, Ray's storage path and the
    resolved tracking URI (all absolute), so that workers (other cwd, other nodes) see the same files.
    """
    from ipt_dist.modeling.backbone import resolve_auto_dtype
    from ipt_dist.tracking import resolve_tracking_uri

    cfg = resolve_auto_dtype(cfg, "cuda" if cfg.distributed.use_gpu else "cpu")  # where the workers run
    cfg = paths.absolutize(cfg)
    cfg = replace(cfg, msf=replace(cfg.msf, prompts_dir=str(paths.msf_prompts_dir(cfg))),
                  distributed=replace(cfg.distributed, storage_path=paths.ray_storage_path(cfg)))
    if cfg.tracking.enabled:
        uri = paths.absolute_uri(resolve_tracking_uri(cfg))
        cfg = replace(cfg, tracking=replace(cfg.tracking, tracking_uri=uri))
    return cfg


# ==================================================================================== checks


def expected_backbone_name(cfg: IPTConfig) -> str:
    """The name `build_backbone` gives this backbone (what prompt files record)."""
    return backbone_name(cfg.backbone)


def backbone_hidden_size(cfg: IPTConfig) -> int | None:
    """Hidden size H of the configured backbone without loading its weights (None: unknown here)."""
    return configured_hidden_size(cfg.backbone)


def check_inputs(cfg: IPTConfig, *, resume: bool = False) -> dict[str, Any]:
    """Everything a run needs, checked in the driver before any worker starts.

    Checks the config, the DeepSpeed config and the batch invariant, that the tasks exist and
    their data loads, that every training task has a stage-0 prompt file of shape (L, H) for
    this backbone, that d fits the prompt, and (with `resume`) that there is a run to continue.

    With `resume`, the run to continue must have been started from these same inputs (`rerun.msf_inputs`,
    recorded in its run.json): a continued run with another d, lr, schedule or other prompts would
    mix two trainings in one checkpoint.

    Returns:
        {"tasks": TaskSplit, "ds_config": resolved dict, "hidden": H or None,
         "sizes": {task: number of training examples}, "provenance": see `msf_provenance`,
         "inputs": `rerun.msf_inputs` (what run.json records)}.
    Raises:
        MSFInputError: listing every problem at once.
    """
    from ipt_dist.data.selection import load_raw, resolve_tasks
    from ipt_dist.data.tasks import DataError

    problems: list[str] = list(cfg.problems())
    out: dict[str, Any] = {"tasks": None, "ds_config": None, "hidden": None, "sizes": {}, "provenance": None,
                           "inputs": None}
    try:
        out["ds_config"] = build_ds_config(cfg)
    except (FileNotFoundError, DeepSpeedConfigError) as exc:
        problems.append(str(exc))
    if cfg.distributed.use_gpu and cfg.distributed.resources_per_worker.get("GPU", 1) <= 0:
        problems.append("distributed.resources_per_worker.GPU: must be > 0 when distributed.use_gpu is true")
    try:
        split = resolve_tasks(cfg)
        out["tasks"] = split
    except DataError as exc:
        problems.append(str(exc))
        split = None
    hidden = backbone_hidden_size(cfg)
    out["hidden"] = hidden
    L = cfg.pt.prompt_len
    if hidden is not None and cfg.msf.d > L * hidden:
        problems.append(f"msf.d: the intrinsic dimension ({cfg.msf.d}) exceeds the prompt size "
                        f"L*H = {L}*{hidden}; choose a smaller d")
    if split is not None:
        try:
            raw = load_raw(cfg, split.train)
            for name, task in raw.items():
                out["sizes"][name] = len(task.train)
                if not task.train:
                    problems.append(f"task {name}: no training examples")
                if not task.dev:
                    problems.append(f"task {name}: no dev examples; dev scores select the best checkpoint")
        except (DataError, FileNotFoundError) as exc:
            problems.append(str(exc))
        if hidden is not None:
            try:
                load_task_prompts(cfg.msf.prompts_dir, split.train, L, hidden, expected_backbone_name(cfg))
            except ArtifactError as exc:
                problems.append(str(exc) + "\n    Fix: run stage 0 first (ipt pt --config ...), or point "
                                "msf.prompts_dir at the prompt files")
        if not problems:  # the prompts' own provenance, then what the checkpoint will record (msf.json)
            try:
                problem, unrecorded = check_msf_prompts(cfg, raw, cfg.data.data_seed, cfg.msf.prompts_dir)
                if problem:
                    problems.append(problem)
                elif unrecorded:
                    log.warning("%d stage-0 prompt files record no provenance (%s): their draw and backbone are "
                                "not checked", len(unrecorded), ", ".join(unrecorded[:5]))
                out["provenance"] = msf_provenance(cfg, raw, cfg.data.data_seed, cfg.msf.prompts_dir)
            except (FileNotFoundError, ArtifactError) as exc:  # unchecked above when H is unknown here
                problems.append(str(exc))
    if split is not None:
        out["inputs"] = msf_inputs(cfg, split.train, cfg.msf.prompts_dir)
    if resume:
        record = dist_dir(cfg) / RUN_FILE
        if not record.is_file():
            problems.append(f"--resume: {record} does not exist, so there is no run to continue in "
                            f"{cfg.output_dir}. Fix: drop --resume to start a new run, or give the "
                            "output_dir of the stopped run")
        elif split is not None:
            problem = _changed_since_start(record, out["inputs"])
            if problem:
                problems.append(problem)
    if problems:
        raise MSFInputError(f"distributed MSF cannot start: {len(problems)} problem(s):\n  - "
                            + "\n  - ".join(problems))
    return out


def _changed_since_start(record: Path, inputs: dict[str, Any]) -> str | None:
    """The problem with continuing the run recorded in `record` with `inputs`, or None."""
    import json

    from ipt_dist.config import describe_changes

    before = json.loads(record.read_text()).get("inputs")
    if before is None:  # recorded before run.json held the inputs: nothing to compare with
        log.warning("%s records no inputs (started by an older ipt_dist): continuing it unchecked", record)
        return None
    diff = describe_changes(before, inputs)
    if not diff:
        return None
    return (f"--resume: the run in {record.parent} was started from other inputs than this config's (changed: "
            f"{diff}). Fix: continue it with the config it started with ({record.parent / 'msf_config.yaml'}), "
            f"or train these inputs in another output_dir (--out), or move {record.parent} away first")


def latest_committed_step(ray_run_dir: Path) -> int:
    """The step of Ray Train's latest committed checkpoint in `<storage>/<ray run>` (0: none yet).

    Read from `checkpoint_manager_snapshot.json`, which Ray Train (2.60, V2) writes once a reported
    checkpoint is committed (`latest_checkpoint_result.checkpoint_dir_name`); the worker names
    checkpoints `checkpoint_step<8 digits>`."""
    import json
    import re

    try:
        latest = json.loads((ray_run_dir / "checkpoint_manager_snapshot.json").read_text()).get("latest_checkpoint_result")
    except (OSError, ValueError):
        return 0
    found = re.fullmatch(r"checkpoint_step(\d{8})", str((latest or {}).get("checkpoint_dir_name", "")))
    return int(found.group(1)) if found else 0


def resumable_run(cfg: IPTConfig) -> bool:
    """True when `<output_dir>` holds a stopped distributed MSF run worth continuing: run.json that
    records its inputs, no summary.json (unfinished) and a committed checkpoint on local storage (a
    remote storage URI is taken as having one; Ray Train starts from step 1 when it has none).

    The pipeline continues such a run instead of starting the stage again; `check_inputs(resume=True)`
    then refuses it when this config's inputs differ from the ones it was started with."""
    import json

    run_dir = dist_dir(cfg)
    if not (run_dir / RUN_FILE).is_file() or (run_dir / "summary.json").is_file():
        return False
    try:
        record = json.loads((run_dir / RUN_FILE).read_text())
    except ValueError:
        return False
    if not record.get("inputs") or not record.get("ray_run"):
        # started by an older ipt_dist: what it was trained from cannot be checked, so it is not continued
        log.info("%s records no inputs (an older run): a new run starts", run_dir / RUN_FILE)
        return False
    storage = str(record.get("storage_path") or paths.ray_storage_path(cfg))
    if "://" in storage:
        return True
    return latest_committed_step(Path(storage) / record["ray_run"]) > 0
