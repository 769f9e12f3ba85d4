"""Re-running a single-process stage into the same output: same inputs -> finished work is
skipped; changed inputs -> refused before any work, naming the changed fields. Pure Python.

    inputs = stage_inputs(cfg, "pt")
    claim_stage_dir(out / "pt", "pt", inputs)   # raises ConfigError when the inputs changed

Each stage directory records the inputs it was trained with in `inputs.json` (and a readable
`config.yaml`), written once, when the directory is first used, and never rewritten: so nothing
on disk describes work that was not done with it. What counts as an input is what changes a
stage's results: the backbone, the data draw, the stage's own section and the artifacts it reads
(digests passed in `extra`). Task lists are not inputs of PT and IST (adding a task adds jobs; the
finished ones stay valid), as growing a sweep is allowed; output paths, tracking, eval batch
sizes and packing (packed == separate) are not inputs at all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ipt_dist.config import ConfigError, IPTConfig, describe_changes, flatten_config, save_config

__all__ = ["INPUTS_FILE", "LATE_FIELDS", "claim_stage_dir", "late_fields", "msf_inputs", "recorded_inputs", "stage_inputs"]

INPUTS_FILE = "inputs.json"

# Sections whose fields change a stage's results, and the fields inside them that do not.
_SECTIONS = {"pt": ("seed", "backbone", "data", "pt"), "msf": ("seed", "backbone", "data", "pt.prompt_len", "msf"),
             "ist": ("seed", "backbone", "data", "pt.prompt_len", "ist")}
_NOT_INPUTS = {"backbone.eval_batch_size", "backbone.cache_dir", "msf.prompts_dir", "ist.msf_checkpoint",
               "msf.eval_max_examples", "msf.checkpoint_every", "msf.log_every",
               "backbone.length_buckets", "backbone.compile"}  # how the backbone pass is batched / run, not what
# Fields added after job ids, provenance records and inputs.json files were first written, with the
# default that means "not used". At that default they are left out of job ids and fingerprints (so
# what earlier versions wrote stays valid); set, they enter them. Stage inputs leave out a default
# that is not None; a None stays in (as `null`, as it always was): `describe_changes` reads a missing
# key as None, so both forms compare equal. The one table job ids (sweep.jobs.job_context),
# fingerprints (provenance) and stage inputs (below) read. `backbone.chat_template` is older than
# this rule: always in fingerprints and inputs, in job ids only when on (sweep.jobs). A field of a
# stage section (`ist.*`) enters only that stage's job ids and inputs.
LATE_FIELDS: dict[str, Any] = {"backbone.answer_prefix": "", "data.shots_per_class": None, "ist.z_init": "normal"}
assert len({p.split(".")[1] for p in LATE_FIELDS}) == len(LATE_FIELDS)  # job ids key them by field name
_TASK_LISTS = {"data.tasks", "data.unseen_tasks", "data.split_file"}  # which tasks, not how each is trained
# `ipt ist` names each job by task, lr and init seed: other values are other jobs, not changed ones.
# (Its data seed is MSF's own draw, which `ipt ist` checks: another one is refused, not a new job.)
_IN_JOB_ID = {"ist": {"ist.lr", "ist.seed"}}


def late_fields(cfg: IPTConfig) -> dict[str, Any]:
    """{config path: value} of the LATE_FIELDS that `cfg` sets (differ from their unset default)."""
    out = {}
    for path, unset in LATE_FIELDS.items():
        section, name = path.split(".")
        value = getattr(getattr(cfg, section), name)
        if value != unset:
            out[path] = value
    return out


def stage_inputs(cfg: IPTConfig, stage: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The flattened config fields (plus `extra`, e.g. digests of the files read) that define `stage`'s results."""
    flat = flatten_config(cfg)
    keep = _SECTIONS[stage]
    out = {k: v for k, v in flat.items()
           if any(k == s or k.startswith(s + ".") for s in keep) and k not in _NOT_INPUTS}
    if stage in ("pt", "ist"):
        out = {k: v for k, v in out.items() if k not in _TASK_LISTS | _IN_JOB_ID.get(stage, set())}
    for k, unset in LATE_FIELDS.items():  # directories written before these fields existed lack them
        if unset is not None and k in out and out[k] == unset:
            del out[k]
    out.update({f"input.{k}": v for k, v in (extra or {}).items()})
    return json.loads(json.dumps(out, sort_keys=True, default=str))  # what a JSON round trip gives back


def msf_inputs(cfg: IPTConfig, train_tasks: list[str], prompts_dir: str | Path) -> dict[str, Any]:
    """What an MSF checkpoint is trained from: its config fields, the resolved training tasks and the
    content digests of their stage-0 prompt files (None for a missing file)."""
    from ipt_dist.provenance import prompt_digest

    extra: dict[str, Any] = {"tasks": list(train_tasks)}
    for t in train_tasks:  # a prompt file, or a PEFT adapter directory
        extra[f"prompt:{t}"] = prompt_digest(prompts_dir, t)
    inputs = stage_inputs(cfg, "msf", extra)
    inputs.pop("data.split_file", None)  # the resolved task list stands for it
    return inputs


def recorded_inputs(stage_dir: str | Path) -> dict[str, Any] | None:
    f = Path(stage_dir) / INPUTS_FILE
    return json.loads(f.read_text()) if f.is_file() else None


def claim_stage_dir(stage_dir: str | Path, stage: str, inputs: dict[str, Any], cfg: IPTConfig | None = None, *,
                    has_results: bool = True) -> bool:
    """Record `inputs` in a stage directory, or check them against what it holds.

    A record without results (a run that failed before its first result) protects nothing and is
    replaced; a record with results is never changed.

    Returns True when the directory already holds results of these same inputs.
    Raises:
        ConfigError: the directory holds results of other inputs (the changed fields, the fix);
            nothing is written or deleted.
    """
    from ipt_dist.artifacts import atomic_write_bytes

    d = Path(stage_dir)
    before = recorded_inputs(d)
    if before is not None:
        diff = describe_changes(before, inputs)
        if not diff:
            return has_results
        if has_results:
            raise ConfigError(f"{d} holds {stage} results trained with other inputs. Changed: {diff}. Fix: run "
                              f"with another output_dir (--out), or move {d} away; finished results are never "
                              "overwritten or mixed")
    d.mkdir(parents=True, exist_ok=True)
    if cfg is not None:
        save_config(cfg, d / "config.yaml")
    atomic_write_bytes(d / INPUTS_FILE, json.dumps(inputs, indent=1, sort_keys=True).encode())
    return False
