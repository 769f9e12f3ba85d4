"""DeepSpeed JSON configs: load one of `ds_configs/*.json`, fill its "auto" fields from our config.

The JSON holds DeepSpeed concerns only (ZeRO stage, offload, bucket sizes, which Adam kernel).
Batch sizes, learning rate, Adam eps / weight decay, gradient clipping and precision come from
`IPTConfig` and are written "auto" in the JSON::

    ds = build_ds_config(cfg)            # load cfg.distributed.ds_config and resolve it
    ds["train_batch_size"] == cfg.msf.batch_size

The batch invariant `global = micro * accum * world` is checked here, before any worker starts.
A number in the JSON where our config owns the value must agree with the config; a
contradiction is an error that names both places, never a silent override. The learning-rate
schedule is ours (linear warmup + linear decay, the same LambdaLR as the single-process
driver), so a "scheduler" section is rejected.

Plain Python: importing this module imports neither deepspeed nor ray.
"""

from __future__ import annotations

import copy
import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ipt_dist.config import IPTConfig
from ipt_dist.errors import UserError

__all__ = [
    "BatchSizes",
    "DeepSpeedConfigError",
    "batch_sizes",
    "build_ds_config",
    "load_ds_config",
    "resolve_ds_config",
    "resolve_ds_config_path",
    "shipped_ds_configs",
    "zero_stage",
]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_DIR = PROJECT_ROOT / "ds_configs"

# Top-level keys DeepSpeed 0.19 understands (https://www.deepspeed.ai/docs/config-json/). A key
# outside this set is almost always a typo that DeepSpeed would silently ignore.
KNOWN_KEYS = frozenset({
    "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "optimizer",
    "scheduler", "communication_data_type", "prescale_gradients", "gradient_predivide_factor",
    "sparse_gradients", "fp16", "bf16", "amp", "gradient_clipping", "zero_optimization",
    "zero_allow_untested_optimizer", "zero_force_ds_cpu_optimizer", "aio", "activation_checkpointing",
    "sparse_attention", "data_efficiency", "curriculum_learning", "compression_training", "flops_profiler",
    "tensorboard", "wandb", "csv_monitor", "comet", "comms_logger", "autotuning", "elasticity",
    "steps_per_print", "wall_clock_breakdown", "dump_state", "memory_breakdown", "checkpoint", "data_types",
    "torch_autocast", "compile", "seq_parallel_communication_data_type", "pipeline", "disable_allgather",
    "dataloader_drop_last", "gradient_allreduce_op", "log_level", "disable_python_gc", "hybrid_engine",
    "tensor_parallel", "nebula", "weight_quantization", "graph_harvesting",
    "use_data_before_expert_parallelism", "timers", "zenflow",
})
# Keys that would take over something our config owns, or that MSF cannot use.
REJECTED_KEYS = {
    "scheduler": "the LR schedule comes from msf.steps / msf.warmup_ratio (linear warmup + linear decay, "
                 "as in the single-process driver); remove 'scheduler'",
    "elasticity": "elastic training changes the batch size at run time, which breaks "
                  "global = micro * accum * world; remove 'elasticity'",
    "amp": "precision comes from backbone.dtype (bf16 / fp16 sections with \"auto\"); remove 'amp'",
    "pipeline": "MSF trains a small autoencoder data-parallel; pipeline parallelism is not supported; "
                "remove 'pipeline'",
    "torch_autocast": "precision comes from backbone.dtype (bf16 / fp16 sections with \"auto\"); "
                      "remove 'torch_autocast'",
}
OPTIMIZER_TYPES = ("AdamW",)
# Optimizer params DeepSpeed passes on to the Adam implementations; lr / eps / weight_decay are ours.
OPTIMIZER_PARAMS = frozenset({"lr", "eps", "weight_decay", "betas", "torch_adam", "adam_w_mode", "foreach",
                              "fp32_optimizer_states", "bias_correction", "amsgrad"})


class DeepSpeedConfigError(UserError):
    """A DeepSpeed config that is invalid or contradicts our config; the message lists every problem."""


@dataclass(frozen=True)
class BatchSizes:
    """How the global MSF batch is split: global = micro * accum * world."""

    global_batch: int  # msf.batch_size: rows per optimiser step over all workers
    micro: int  # rows per worker per forward/backward
    accum: int  # micro-batches accumulated per optimiser step
    world: int  # data-parallel workers

    @property
    def per_worker(self) -> int:
        return self.micro * self.accum  # rows each worker draws per optimiser step


def batch_sizes(cfg: IPTConfig, world_size: int | None = None) -> BatchSizes:
    """The batch split of `cfg` over `world_size` workers (default distributed.num_workers).

    distributed.micro_batch_size may be left null: it is then msf.batch_size / (grad_accum * world).

    Raises:
        DeepSpeedConfigError: global != micro * accum * world, or the global batch does not divide.
    """
    world = cfg.distributed.num_workers if world_size is None else world_size
    accum = cfg.distributed.grad_accum
    glob = cfg.msf.batch_size
    micro = cfg.distributed.micro_batch_size
    if micro is None:
        if glob % (accum * world):
            example = max(1, glob // (accum * world)) * accum * world
            raise DeepSpeedConfigError(
                f"batch invariant: msf.batch_size ({glob}) must be divisible by distributed.grad_accum "
                f"({accum}) * distributed.num_workers ({world}) = {accum * world} to derive the per-worker "
                f"micro batch. Fix: set msf.batch_size to a multiple of {accum * world} (e.g. {example}), "
                "or change grad_accum / num_workers")
        micro = glob // (accum * world)
    if micro * accum * world != glob:
        product = micro * accum * world
        raise DeepSpeedConfigError(
            f"batch invariant global = micro * accum * world does not hold: msf.batch_size = {glob} but "
            f"distributed.micro_batch_size ({micro}) * distributed.grad_accum ({accum}) * "
            f"distributed.num_workers ({world}) = {product}. Fix: set msf.batch_size={product}, "
            "or set distributed.micro_batch_size to null so it is derived from the global batch")
    return BatchSizes(glob, micro, accum, world)


def shipped_ds_configs() -> list[Path]:
    """The DeepSpeed configs that ship with the project (ds_configs/*.json)."""
    return sorted(SHIPPED_DIR.glob("*.json"))


def resolve_ds_config_path(path: str | Path) -> Path:
    """An absolute path; a relative one is tried against the cwd, then the project root.

    The project-root fallback makes `ds_configs/zero2.json` work from any directory, including
    the temporary working-dir copy that `ray job submit` runs in.

    Raises:
        FileNotFoundError: the file exists in none of those places.
    """
    p = Path(path).expanduser()
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, PROJECT_ROOT / p]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    shipped = ", ".join(str(s.relative_to(PROJECT_ROOT)) for s in shipped_ds_configs())
    raise FileNotFoundError(
        f"distributed.ds_config: {path} does not exist (looked in {', '.join(str(c) for c in candidates)}). "
        f"Fix: point it at a DeepSpeed JSON file; shipped: {shipped}")


def load_ds_config(path: str | Path) -> dict:
    """Read a DeepSpeed JSON config (no resolution yet).

    Raises:
        FileNotFoundError: no such file.
        DeepSpeedConfigError: not valid JSON, or not a JSON object.
    """
    p = resolve_ds_config_path(path)
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise DeepSpeedConfigError(f"{p}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise DeepSpeedConfigError(f"{p}: the top level must be a JSON object, got {type(data).__name__}")
    return data


def zero_stage(ds: dict) -> int:
    return int((ds.get("zero_optimization") or {}).get("stage", 0))


def _fill(section: dict, key: str, value: Any, owner: str, where: str, problems: list[str]) -> None:
    """Set section[key] = value when it is absent or "auto"; a different number is a contradiction."""
    current = section.get(key, "auto")
    if current == "auto":
        section[key] = value
    elif isinstance(value, float) and isinstance(current, (int, float)) and not isinstance(current, bool):
        if abs(float(current) - value) > 1e-12 * max(1.0, abs(value)):
            problems.append(f"{where}: {current!r} contradicts {owner} = {value!r}. Fix: write \"auto\" "
                            f"(the value then comes from {owner}) or change {owner}")
    elif current != value:
        problems.append(f"{where}: {current!r} contradicts {owner} = {value!r}. Fix: write \"auto\" "
                        f"(the value then comes from {owner}) or change {owner}")


def _precision(ds: dict, dtype: str, problems: list[str]) -> None:
    assert dtype != "auto", "backbone.dtype 'auto' must be resolved first (absolutize / resolve_auto_dtype)"
    wanted = {"bf16": dtype == "bfloat16", "fp16": dtype == "float16"}
    for key, on in wanted.items():
        section = ds.get(key)
        if section is None:
            ds[key] = {"enabled": on}
            continue
        if not isinstance(section, dict):
            problems.append(f"{key}: must be an object like {{\"enabled\": \"auto\"}}, got {section!r}")
            continue
        enabled = section.get("enabled", "auto")
        if enabled == "auto":
            section["enabled"] = on
        elif bool(enabled) != on:
            problems.append(f"{key}.enabled: {enabled!r} contradicts backbone.dtype = {dtype!r}. "
                            f"Fix: write \"enabled\": \"auto\" (precision follows backbone.dtype) or set "
                            f"backbone.dtype={'bfloat16' if key == 'bf16' else 'float16'}")


def _optimizer(ds: dict, cfg: IPTConfig, problems: list[str]) -> None:
    m = cfg.msf
    opt = ds.setdefault("optimizer", {"type": "AdamW", "params": {}})
    if not isinstance(opt, dict):
        problems.append(f"optimizer: must be an object, got {opt!r}")
        return
    unknown = set(opt) - {"type", "params"}
    if unknown:
        problems.append(f"optimizer: unknown keys {sorted(unknown)}; only 'type' and 'params' are allowed")
    if opt.setdefault("type", "AdamW") not in OPTIMIZER_TYPES:
        problems.append(f"optimizer.type: {opt['type']!r} is not supported; MSF trains with "
                        f"{OPTIMIZER_TYPES} (the reference optimiser). Fix: \"type\": \"AdamW\"")
    params = opt.setdefault("params", {})
    if not isinstance(params, dict):
        problems.append(f"optimizer.params: must be an object, got {params!r}")
        return
    for key in sorted(set(params) - OPTIMIZER_PARAMS):
        close = difflib.get_close_matches(key, sorted(OPTIMIZER_PARAMS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        extra = ""
        if key == "max_grad_norm":
            extra = " (use the top-level 'gradient_clipping', filled from msf.grad_clip)"
        problems.append(f"optimizer.params.{key}: unknown parameter{hint}{extra}")
    _fill(params, "lr", float(m.lr), "msf.lr", "optimizer.params.lr", problems)
    _fill(params, "eps", float(m.adam_eps), "msf.adam_eps", "optimizer.params.eps", problems)
    _fill(params, "weight_decay", float(m.weight_decay), "msf.weight_decay", "optimizer.params.weight_decay",
          problems)


def _zero(ds: dict, problems: list[str]) -> None:
    zero = ds.setdefault("zero_optimization", {"stage": 0})
    if not isinstance(zero, dict):
        problems.append(f"zero_optimization: must be an object, got {zero!r}")
        return
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3):
        problems.append(f"zero_optimization.stage: must be 0, 1, 2 or 3, got {stage!r}")
        return
    offload_param = (zero.get("offload_param") or {}).get("device", "none")
    offload_opt = (zero.get("offload_optimizer") or {}).get("device", "none")
    if offload_param not in ("none", None) and stage != 3:
        problems.append(f"zero_optimization.offload_param: parameter offload needs stage 3, the config has "
                        f"stage {stage}. Fix: use ds_configs/zero3_offload.json or drop offload_param")
    if offload_opt not in ("none", None) and stage == 0:
        problems.append("zero_optimization.offload_optimizer: optimizer offload needs ZeRO stage >= 1")


def _leftover_autos(node: Any, where: str, problems: list[str]) -> None:
    if node == "auto":
        problems.append(f"{where}: \"auto\" is not filled by ipt_dist (only batch sizes, optimizer lr / "
                        "eps / weight_decay, gradient_clipping and bf16 / fp16 are). Fix: give a number, or "
                        "remove the key so DeepSpeed uses its default")
    elif isinstance(node, dict):
        for k, v in node.items():
            _leftover_autos(v, f"{where}.{k}" if where else k, problems)


def resolve_ds_config(ds: dict, cfg: IPTConfig, world_size: int | None = None,
                      source: str = "ds_config") -> dict:
    """A copy of `ds` with every "auto" filled from `cfg`, checked against it.

    Filled: train_batch_size (msf.batch_size), train_micro_batch_size_per_gpu,
    gradient_accumulation_steps (distributed.*), optimizer AdamW lr / eps / weight_decay (msf.*),
    gradient_clipping (msf.grad_clip; 0 disables), bf16.enabled / fp16.enabled (backbone.dtype).

    Raises:
        DeepSpeedConfigError: every problem at once: unknown or unsupported keys, numbers that
            contradict our config, the batch invariant, impossible ZeRO settings.
    """
    problems: list[str] = []
    ds = copy.deepcopy(ds)
    for key in ds:
        if key in REJECTED_KEYS:
            problems.append(f"{key}: {REJECTED_KEYS[key]}")
        elif key not in KNOWN_KEYS:
            close = difflib.get_close_matches(key, sorted(KNOWN_KEYS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(f"{key}: unknown DeepSpeed key{hint} (DeepSpeed would silently ignore it)")
    try:
        b = batch_sizes(cfg, world_size)
    except DeepSpeedConfigError as exc:
        problems.append(str(exc))
    else:
        _fill(ds, "train_batch_size", b.global_batch, "msf.batch_size", "train_batch_size", problems)
        _fill(ds, "train_micro_batch_size_per_gpu", b.micro, "distributed.micro_batch_size (derived)",
              "train_micro_batch_size_per_gpu", problems)
        _fill(ds, "gradient_accumulation_steps", b.accum, "distributed.grad_accum",
              "gradient_accumulation_steps", problems)
    _fill(ds, "gradient_clipping", float(cfg.msf.grad_clip), "msf.grad_clip", "gradient_clipping", problems)
    _optimizer(ds, cfg, problems)
    _precision(ds, cfg.backbone.dtype, problems)
    if isinstance(ds.get("bf16"), dict) and isinstance(ds.get("fp16"), dict) \
            and ds["bf16"].get("enabled") is True and ds["fp16"].get("enabled") is True:
        problems.append("bf16.enabled and fp16.enabled are both true; pick one "
                        "(\"auto\" follows backbone.dtype)")
    _zero(ds, problems)
    _leftover_autos({k: v for k, v in ds.items() if k not in REJECTED_KEYS}, "", problems)
    if problems:
        raise DeepSpeedConfigError(f"{source}: {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))
    return ds


def build_ds_config(cfg: IPTConfig, world_size: int | None = None) -> dict:
    """Load `cfg.distributed.ds_config` and resolve it against `cfg` (see `resolve_ds_config`).

    Raises:
        FileNotFoundError: the JSON file does not exist.
        DeepSpeedConfigError: invalid JSON or any problem `resolve_ds_config` finds.
    """
    path = resolve_ds_config_path(cfg.distributed.ds_config)
    return resolve_ds_config(load_ds_config(path), cfg, world_size, source=str(path))
