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

    Returns:
        {"tasks": TaskSplit, "ds_config": resolved dict, "hidden": H or None,
         "sizes": {task: number of training examples}, "provenance": see `msf_provenance`}.
    Raises:
        MSFInputError: listing every problem at once.
    """
    from ipt_dist.data.selection import load_raw, resolve_tasks
    from ipt_dist.data.tasks import DataError

    problems: list[str] = list(cfg.problems())
    out: dict[str, Any] = {"tasks": None, "ds_config": None, "hidden": None, "sizes": {}, "provenance": None}
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
    if resume:
        record = dist_dir(cfg) / RUN_FILE
        if not record.is_file():
            problems.append(f"--resume: {record} does not exist, so there is no run to continue in "
                            f"{cfg.output_dir}. Fix: drop --resume to start a new run, or give the "
                            "output_dir of the stopped run")
    if problems:
        raise MSFInputError(f"distributed MSF cannot start: {len(problems)} problem(s):\n  - "
                            + "\n  - ".join(problems))
    return out
