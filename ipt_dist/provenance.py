"""Provenance: what a stage-0 prompt or an MSF checkpoint was trained from, and the check that
the next stage uses the same thing.

A record holds two fingerprints (plain JSON, stored in prompt-file metadata and in `msf.json`):

- ``data``: the few-shot draw: ``data.data_seed`` (None when the draw does not depend on a seed:
  no ``train_size`` and no ``k``), ``k``, ``train_size``, ``max_examples``, the data source, the
  task list and, per task, a content digest of the training split actually used (after the
  draw), so a data file changed under the same seed is caught too;
- ``backbone``: every config field that changes the model or its token ids (name, dtype, chat
  template, truncation lengths, task prefix) and the prompt length.

An MSF record also holds the digest of every stage-0 prompt file it read. Pure functions over the
config and already-loaded tasks: drivers load the data, this module only fingerprints and compares.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from ipt_dist.config import IPTConfig
from ipt_dist.data.records import Example, TaskData
from ipt_dist.modeling.backbone import backbone_name  # re-exported: its home is modeling.backbone
from ipt_dist.rerun import late_fields

__all__ = [
    "NO_PROVENANCE",
    "VERSION",
    "backbone_fingerprint",
    "backbone_name",
    "check_decoder_provenance",
    "check_msf_prompts",
    "check_prompt_provenance",
    "data_fingerprint",
    "draw_seed",
    "file_digest",
    "mismatch_message",
    "msf_provenance",
    "prompt_digest",
    "prompt_provenance",
    "record_digest",
    "split_digest",
]

VERSION = 1
# Fields of the data fingerprint that define the draw (data_dir and format may move or be spelled
# differently for the same examples: the content digests decide).
_DRAW_FIELDS = ("data.data_seed", "data.k", "data.train_size", "data.shots_per_class", "data.max_examples")
_SHOW = 5  # tasks named in a digest mismatch (a changed seed changes them all)
NO_PROVENANCE = ("records no provenance (msf.json was written before ipt_dist recorded what MSF was trained "
                 "from), so its training draw and backbone cannot be checked against this run")


def backbone_fingerprint(cfg: IPTConfig) -> dict:
    """Config fields that change the backbone's outputs or its token ids, keyed by their config path.

    Left out: dropout, label smoothing and decoding settings (they change training or scoring, not
    what a prompt means to the model), eval batch size, cache paths.
    """
    b = cfg.backbone
    out = {"backbone": backbone_name(b), "backbone.dtype": b.dtype,
           "backbone.chat_template": b.chat_template, "backbone.max_input_len": b.max_input_len,
           "backbone.max_target_len": b.max_target_len,
           "data.task_prefix": cfg.data.task_prefix, "pt.prompt_len": cfg.pt.prompt_len}
    # only when set (rerun.LATE_FIELDS): fingerprints recorded before those fields existed stay equal
    out.update({k: v for k, v in late_fields(cfg).items() if k.startswith("backbone.")})
    return out


def draw_seed(cfg: IPTConfig, seed: int | None) -> int | None:
    """The seed that picks the few-shot draw, or None when no seed does (all examples, one file)."""
    d = cfg.data
    return seed if d.train_size is not None or d.k is not None or d.shots_per_class is not None else None


def split_digest(examples: Iterable[Example]) -> str:
    """Content digest of a split: inputs, answers and options in order."""
    h = hashlib.sha1()
    for ex in examples:
        h.update(json.dumps([ex.input, list(ex.outputs), list(ex.options or ())]).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def record_digest(record: dict, length: int = 16) -> str:
    """Digest of a provenance record (canonical JSON): a short value for places with length limits
    (MLflow params and tags); equal records give equal digests."""
    return hashlib.sha1(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:length]


def data_fingerprint(cfg: IPTConfig, tasks: dict[str, TaskData], seed: int | None) -> dict:
    """The draw `tasks` were loaded with (`seed`: the data seed passed to the loader)."""
    d = cfg.data
    return {"data.data_dir": d.data_dir, "data.format": d.format, "data.data_seed": draw_seed(cfg, seed),
            "data.k": d.k, "data.train_size": d.train_size, "data.max_examples": d.max_examples,
            "tasks": list(tasks), "train_digest": {n: split_digest(t.train) for n, t in tasks.items()},
            # only when set (rerun.LATE_FIELDS): records written before those fields existed keep their digests
            **{k: v for k, v in late_fields(cfg).items() if k.startswith("data.")}}


def file_digest(path: str | Path, length: int = 16) -> str:
    """sha1 of a file's content; of a directory (a PEFT adapter), of each file's name and content in
    name order. The first `length` hex digits."""
    p = Path(path)
    files = sorted(x for x in p.iterdir() if x.is_file()) if p.is_dir() else [p]
    h = hashlib.sha1()
    for name in files:
        if p.is_dir():
            h.update(name.name.encode() + b"\0")
        with open(name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:length]


def prompt_digest(prompts_dir: str | Path, task: str, length: int = 16) -> str | None:
    """`file_digest` of `task`'s stage-0 prompt (a prompt file or a PEFT adapter directory; see
    `artifacts.find_prompt`), None when it has none."""
    from ipt_dist.artifacts import find_prompt

    p = find_prompt(prompts_dir, task)
    return file_digest(p, length) if p.exists() else None


def prompt_provenance(cfg: IPTConfig, task: TaskData, seed: int | None) -> dict:
    """What a stage-0 prompt of `task` was trained from (stored in its prompt file's metadata)."""
    return {"version": VERSION, "data": data_fingerprint(cfg, {task.name: task}, seed),
            "backbone": backbone_fingerprint(cfg)}


def msf_provenance(cfg: IPTConfig, tasks: dict[str, TaskData], seed: int | None,
                   prompts_dir: str | Path) -> dict:
    """What an MSF checkpoint was trained from (the ``provenance`` of msf.json, single-process and
    distributed alike): its training tasks as loaded with data seed `seed`, the backbone, and the
    stage-0 prompt files of those tasks in `prompts_dir`."""
    return {"version": VERSION, "data": data_fingerprint(cfg, tasks, seed),
            "backbone": backbone_fingerprint(cfg),
            "prompts": {t: prompt_digest(prompts_dir, t) for t in tasks}}


def check_decoder_provenance(recorded: dict | None, cfg: IPTConfig, same: dict[str, TaskData],
                             same_seed: int | None, new_seeds: Iterable[int] = ()) -> list[str]:
    """Mismatches between an MSF checkpoint's provenance and the IST run that would use its decoder.

    Args:
        recorded: the checkpoint's ``provenance`` (msf.json), None for a checkpoint written before
            provenance was recorded.
        same: the training tasks as loaded for setting 3 (the same data as MSF), `same_seed` its seed.
        new_seeds: the draws of setting 4 ("new data"): MSF's own draw must not be among them.
    Returns:
        One "field: checkpoint X vs config Y" line per mismatch; empty when the decoder fits.
    """
    if not recorded:
        return [NO_PROVENANCE]
    out = _mismatches(recorded, cfg, same, same_seed)
    msf_seed, new_seeds = recorded.get("data", {}).get("data.data_seed"), list(new_seeds)
    if msf_seed is not None and any(draw_seed(cfg, s) == msf_seed for s in new_seeds):
        out.append(f"data.data_seed: the checkpoint's training draw {msf_seed} is among setting 4's new "
                   f"draws (sweep.data_seeds[1:] = {new_seeds}): that 'new data' would be MSF's own")
    return out


def check_prompt_provenance(metas: dict[str, dict], cfg: IPTConfig, tasks: dict[str, TaskData],
                            seed: int | None) -> tuple[list[str], list[str]]:
    """Stage-0 prompt files against the run that reads them (MSF, settings 1-2): trained on the same
    draw of their task (`tasks` as loaded with `seed`) and the same backbone.

    Args:
        metas: task -> the prompt file's metadata.
    Returns:
        (one "task: field: prompt X vs config Y" line per mismatch, tasks whose file records no
        provenance: written before it was recorded, or by hand).
    """
    problems, unrecorded = [], []
    for t, meta in metas.items():
        recorded = meta.get("provenance")
        if not recorded:
            unrecorded.append(t)
            continue
        same = {t: tasks[t]} if t in tasks else {}
        problems += [f"{t}: {m}" for m in _mismatches(recorded, cfg, same, seed, "prompt")]
    return problems, unrecorded


def check_msf_prompts(cfg: IPTConfig, tasks: dict[str, TaskData], seed: int | None,
                      prompts_dir: str | Path) -> tuple[str | None, list[str]]:
    """The stage-0 prompt files MSF is about to read were trained on its draw with its backbone.

    Returns:
        (one problem listing every mismatch and the fix, or None; tasks whose prompt file records no
        provenance, not checked).
    """
    from ipt_dist.artifacts import find_prompt, load_prompt

    paths = {t: find_prompt(prompts_dir, t) for t in tasks}
    # a missing file is reported with every other one by load_task_prompts
    metas = {t: load_prompt(p)[1] for t, p in paths.items() if p.exists()}
    mismatches, unrecorded = check_prompt_provenance(metas, cfg, tasks, seed)
    if not mismatches:
        return None, unrecorded
    lines = "".join(f"\n      - {m}" for m in mismatches)
    return (f"stage-0 prompts in {prompts_dir} were trained on another draw or backbone than this MSF run "
            f"(prompt value vs config value):{lines}\n    Fix: train stage 0 with this config's data and "
            "backbone (ipt pt, or the PT sweep with sweep.data_seeds[0] = data.data_seed) or point "
            "msf.prompts_dir at prompts trained with them"), unrecorded


def _mismatches(recorded: dict, cfg: IPTConfig, same: dict[str, TaskData], same_seed: int | None,
                what: str = "checkpoint") -> list[str]:
    """"field: <what> X vs config Y" per differing backbone or draw field, one line for the digests."""
    out = []
    want_backbone = backbone_fingerprint(cfg)
    got_backbone = recorded.get("backbone", {})
    for key in sorted(set(want_backbone) | set(got_backbone)):
        if got_backbone.get(key) != want_backbone.get(key):
            out.append(f"{key}: {what} {got_backbone.get(key)!r} vs config {want_backbone.get(key)!r}")
    want, got = data_fingerprint(cfg, same, same_seed), recorded.get("data", {})
    for key in _DRAW_FIELDS:
        if got.get(key) != want.get(key):
            where = " (setting 3's draw)" if key == "data.data_seed" and what == "checkpoint" else ""
            out.append(f"{key}: {what} {got.get(key)!r} vs config {want.get(key)!r}{where}")
    got_digest = got.get("train_digest", {})
    both = [t for t in want["train_digest"] if t in got_digest]
    changed = [f"{t} ({what} {got_digest[t]} vs config {want['train_digest'][t]})" for t in both
               if got_digest[t] != want["train_digest"][t]]
    if changed:
        more = f"; ... and {len(changed) - _SHOW} more" if len(changed) > _SHOW else ""
        out.append(f"training data (digest of the train split) differs for {len(changed)} of {len(both)} "
                   f"tasks: {'; '.join(changed[:_SHOW])}{more}: another draw, or the data files changed")
    return out


def mismatch_message(ckpt: str | Path, mismatches: list[str], fix: str) -> str:
    """One message for every mismatch of a decoder, then the fix."""
    if mismatches == [NO_PROVENANCE]:
        return f"the MSF checkpoint {ckpt} {NO_PROVENANCE}. Fix: {fix}"
    lines = "".join(f"\n      - {m}" for m in mismatches)
    return (f"the MSF checkpoint {ckpt} does not fit this run ({len(mismatches)} mismatch"
            f"{'es' * (len(mismatches) > 1)}, checkpoint value vs config value):{lines}\n    Fix: {fix}")
