"""What a sweep job is: its fields, its content-derived id, and the plan's types.

A job's id hashes its defining fields plus the run context (backbone, data, schedule, decoder
fingerprint; `job_context`), so the same job gets the same id in every submission and a finished
sweep directory resumes. Changing what goes into the hash changes every id: `tests/sweep/test_jobs.py`
pins a few.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ipt_dist.config import IPTConfig
from ipt_dist.rerun import late_fields

__all__ = ["IST_DECODERS", "IST_SETTINGS", "STAGES", "DecoderInfo", "JobSpec", "SweepPlan", "digest", "job_context",
           "make_job", "pack_settings", "prompts_dir", "sweep_dir"]

STAGES = ("ist", "pt")
IST_SETTINGS = ("ist_seen_same", "ist_seen_new", "ist_unseen")
# Decoders of IST jobs: MSF's, and the baselines sweep.random_decoder / sweep.pca_decoder add.
IST_DECODERS = ("msf", "random", "pca")


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


def digest(obj: Any) -> str:
    """sha1 of the canonical JSON of `obj` (what job ids and decoder fingerprints are made of)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def make_job(context: dict, **fields) -> JobSpec:
    """A JobSpec whose id is a hash of its defining fields plus the run context (backbone,
    data, schedule, decoder fingerprint): the same job gets the same id in every submission."""
    defining = {k: v for k, v in fields.items() if k != "msf_run_id"}
    job_id = f"{fields['role']}-{digest({'job': defining, 'context': context})[:14]}"
    return JobSpec(job_id=job_id, **fields)


def pack_settings(cfg: IPTConfig, kind: str):
    """The `PackSettings` (schedule) a pack of `kind` ("pt" | "ist") trains with."""
    from ipt_dist.train.packed import PackSettings

    return PackSettings.from_config(cfg, kind)


def job_context(cfg: IPTConfig, kind: str) -> dict:
    """What, besides a job's own fields, changes its result (paths of outputs are not in it)."""
    b, d = cfg.backbone, cfg.data
    ctx = {"backbone": [b.name_or_path, b.arch, b.dtype, b.dropout, b.max_input_len, b.max_target_len,
                        b.label_smoothing, b.num_beams, b.max_new_tokens],
           "data": [d.data_dir, d.format, d.tasks_file, d.k, d.train_size, d.max_examples, d.task_prefix,
                    d.hf_input_column, d.hf_output_column],
           "prompt_len": cfg.pt.prompt_len}
    if b.chat_template:  # changes every token id; only when on, so ids of earlier sweeps stay valid
        ctx["chat_template"] = True
    for path, value in late_fields(cfg).items():  # only when set, as above (rerun.LATE_FIELDS)
        section, name = path.split(".", 1)
        if section in ("backbone", "data") or section == kind:  # ist.z_init: IST jobs only
            ctx[name] = value
    if kind in ("ist", "pt"):
        s = asdict(pack_settings(cfg, kind))
        for how in ("eval_batch_size", "max_rows", "length_buckets"):  # how the work is batched, not what
            s.pop(how, None)
        ctx["schedule"] = s
    return ctx


def sweep_dir(cfg: IPTConfig, stage: str) -> Path:
    return Path(cfg.output_dir) / f"{stage}_sweep"


def prompts_dir(cfg: IPTConfig) -> Path:
    """The stage-0 prompt files: what the PT sweep writes, settings 1-2 encode and PCA spans."""
    from ipt_dist.paths import msf_prompts_dir

    return msf_prompts_dir(cfg).resolve()


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
