"""PEFT PromptTuning adapters in and out: a run's prompt as an adapter directory, an adapter as a prompt.

    ipt export-peft RUN_DIR --task T [--d D] OUT

An adapter directory holds exactly what peft 0.21 `PeftModel.save_pretrained` writes for a
PromptTuning model (tests/test_peft_io.py diffs it against a real one): `adapter_config.json`
and `adapter_model.safetensors` with one tensor `prompt_embeddings` (L, H) fp32, plus our
`ipt_export.json` (which prompt of which run it is). The files are written here directly, so
exporting needs no peft install. Our prompt goes to the encoder only of an encoder-decoder, hence
`num_transformer_submodules: 1` (PEFT's default for SEQ_2_SEQ_LM is 2, encoder and decoder).

Sources: no `--d`, the stage-0 prompt P_T (`msf.prompts_dir`, default `RUN_DIR/prompts`); `--d D`,
the IST prompt Dec(z*) of the IST job for T at that d with the MSF decoder and the best dev score:
the IST sweep's (z* from `ist_sweep/params/`, Dec from the checkpoint `ist_sweep/config.yaml` maps
d to), else single-process `ipt ist`'s (`ist/z/`, `ist.msf_checkpoint` or `RUN_DIR/msf`).

Plain PyTorch + safetensors: no ray, mlflow or deepspeed imports, no driver imports.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path

import torch

from ipt_dist.artifacts import (
    ArtifactError,
    atomic_write_bytes,
    find_prompt,
    load_decoder,
    load_prompt,
    read_jsonl,
    write_error,
)
from ipt_dist.config import BackboneConfig

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
EXPORT_INFO = "ipt_export.json"
TENSOR_NAME = "prompt_embeddings"
PEFT_VERSION = "0.21.2"  # the PEFT release whose files these match (written as `peft_version`)
# Saved configs of a run directory, in the order their backbone and msf.prompts_dir are trusted.
RUN_CONFIGS = ("ist_sweep/config.yaml", "pt_sweep/config.yaml", "msf_config.yaml", "pt_config.yaml",
               "ist_config.yaml")
_SETTING_ORDER = {"ist_seen_same": 0, "ist_seen_new": 1, "ist_unseen": 2}


# ------------------------------------------------------------------ the adapter format


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_config(prompt_len: int, hidden: int, *, encoder_decoder: bool, base_model: str | None,
                   num_layers: int | None = None, num_attention_heads: int | None = None) -> dict:
    """`adapter_config.json` of a PromptTuning adapter, key for key as peft 0.21 writes it."""
    return {
        "auto_mapping": None,
        "base_model_name_or_path": base_model,
        "inference_mode": True,
        "modules_to_save": None,
        "num_attention_heads": num_attention_heads,
        "num_layers": num_layers,
        "num_transformer_submodules": 1,  # encoder only, as our prompts are trained
        "num_virtual_tokens": prompt_len,
        "peft_type": "PROMPT_TUNING",
        "peft_version": PEFT_VERSION,
        "prompt_tuning_init": "RANDOM",
        "prompt_tuning_init_text": None,
        "revision": None,
        "task_type": "SEQ_2_SEQ_LM" if encoder_decoder else "CAUSAL_LM",
        "token_dim": hidden,
        "tokenizer_kwargs": None,
        "tokenizer_name_or_path": None,
    }


def write_adapter(out: str | Path, prompt: torch.Tensor, config: dict, info: dict) -> Path:
    """Write the adapter directory `out` (config, weights, `ipt_export.json`) all at once.

    The files go to a temporary sibling that is renamed to `out`: a failed write leaves no half
    adapter behind.

    Raises:
        ArtifactError: `out` is a file or a non-empty directory (never overwritten), or a write failed.
    """
    from safetensors.torch import save

    out = _refuse_existing(out)
    L, H = prompt.shape
    assert (config["num_virtual_tokens"], config["token_dim"]) == (L, H), (config, prompt.shape)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(tmp / ADAPTER_WEIGHTS, save({TENSOR_NAME: prompt.detach().float().contiguous().cpu()},
                                                      metadata={"format": "pt"}))  # PEFT's metadata
        atomic_write_bytes(tmp / ADAPTER_CONFIG, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
        atomic_write_bytes(tmp / EXPORT_INFO, (json.dumps(info, indent=1, default=str) + "\n").encode())
        if out.is_dir():
            out.rmdir()  # empty, checked above
        tmp.rename(out)
    except OSError as exc:
        raise write_error(out, exc) from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _refuse_existing(out: str | Path) -> Path:
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{out} is a file. Fix: give a new directory as OUT")
    if out.is_dir() and any(out.iterdir()):
        raise ArtifactError(f"{out} already exists and is not empty; export never overwrites. "
                            "Fix: give a new directory as OUT, or delete this one first")
    return out


def read_adapter(path: str | Path) -> tuple[torch.Tensor, dict]:
    """The prompt (L, H) fp32 of a PEFT PromptTuning adapter directory, and its metadata.

    The metadata has `backbone` (the adapter's `base_model_name_or_path`), `prompt_len`,
    `hidden`, `task_type`, and whatever `ipt_export.json` records when we wrote the adapter.

    Raises:
        ArtifactError: not a PromptTuning adapter, prompts for the decoder too
            (`num_transformer_submodules` 2), weights missing or not matching the config, NaN/Inf.
    """
    path = Path(path)
    cfg_file = path / ADAPTER_CONFIG
    if not cfg_file.is_file():
        raise ArtifactError(f"{path} is a directory without {ADAPTER_CONFIG}: neither a prompt file nor a PEFT "
                            "adapter directory. Fix: point at a <task>.safetensors prompt file or an adapter "
                            "directory written by PeftModel.save_pretrained / ipt export-peft")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{cfg_file}: not valid JSON ({exc}); re-save the adapter") from exc
    if not isinstance(cfg, dict):
        raise ArtifactError(f"{cfg_file}: expected a JSON object, got {type(cfg).__name__}; re-save the adapter")
    problems = []
    if cfg.get("peft_type") != "PROMPT_TUNING":
        problems.append(f"peft_type is {cfg.get('peft_type')!r}, only PROMPT_TUNING adapters are soft prompts "
                        "of this method (train one with peft.PromptTuningConfig)")
    task_type = cfg.get("task_type")
    n_sub = cfg.get("num_transformer_submodules")
    if n_sub is None:  # PEFT's own default when the field is empty
        n_sub = 2 if task_type == "SEQ_2_SEQ_LM" else 1
    if n_sub != 1:
        problems.append(f"num_transformer_submodules is {n_sub}: the adapter prompts the decoder too, this "
                        "project prepends one prompt to the encoder only. Fix: train it with "
                        "PromptTuningConfig(num_transformer_submodules=1)")
    L, H = cfg.get("num_virtual_tokens"), cfg.get("token_dim")
    for name, v in (("num_virtual_tokens", L), ("token_dim", H)):
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            problems.append(f"{name} must be a positive integer, got {v!r}")
    if problems:
        raise ArtifactError(f"{path}: not usable as a stage-0 prompt: " + "; ".join(problems))
    weights = path / ADAPTER_WEIGHTS
    if not weights.is_file():
        other = " (only adapter_model.bin, a pickle: re-save with safe_serialization=True)" if (
            path / "adapter_model.bin").is_file() else ""
        raise ArtifactError(f"{path}: {ADAPTER_WEIGHTS} is missing{other}. Fix: re-save the adapter")
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            names = list(f.keys())
            p = f.get_tensor(TENSOR_NAME) if TENSOR_NAME in names else None
    except Exception as exc:  # safetensors raises its own error types for truncated files
        raise ArtifactError(f"{weights}: cannot be read ({exc}); the file is truncated or corrupt. "
                            "Fix: re-save or re-export the adapter") from exc
    if p is None:
        raise ArtifactError(f"{weights}: no tensor named {TENSOR_NAME!r} (found {sorted(names)}); "
                            "not a PromptTuning adapter")
    if tuple(p.shape) != (L, H):
        raise ArtifactError(f"{weights}: {TENSOR_NAME} has shape {tuple(p.shape)}, but {ADAPTER_CONFIG} says "
                            f"num_virtual_tokens={L}, token_dim={H}. Fix: re-save the adapter")
    p = p.float()
    if not torch.isfinite(p).all():
        raise ArtifactError(f"{weights}: the prompt contains NaN or Inf values")
    meta = {}
    info_file = path / EXPORT_INFO
    if info_file.is_file():
        try:
            meta = dict(json.loads(info_file.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError):
            meta = {}  # provenance only; the adapter itself is complete without it
    meta.update(backbone=cfg.get("base_model_name_or_path"), prompt_len=L, hidden=H, task_type=task_type)
    return p, meta


# ------------------------------------------------------------------ export from a run directory


def export_peft(run_dir: str | Path, task: str, out: str | Path, d: int | None = None) -> dict:
    """Write task `task`'s prompt of `run_dir` as a PEFT adapter directory `out`; return what was chosen.

    Without `d`: the stage-0 prompt P_task. With `d`: Dec(z*) of the IST job for `task` at `d`
    with the MSF decoder and the best dev score.

    Raises:
        ArtifactError / FileNotFoundError: no such run, task, IST result at `d`, or files; `out` not empty.
        BackboneError: the backbone the prompt was trained on cannot be resolved to a model config.
    """
    run = Path(run_dir).expanduser().resolve()
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {run} does not exist; give the --out of ipt pt / quickstart / "
                                "the sweeps")
    out = _refuse_existing(out)  # before any work; checked again at the write
    run_cfg = _run_config(run)
    prompt, info = _ist_prompt(run, task, d) if d is not None else _stage0_prompt(run, run_cfg, task)
    name, bcfg = _backbone_config(info.get("backbone"), run_cfg, run)
    info["backbone"] = name
    from ipt_dist.modeling.backbone import BackboneError, load_model_config, model_hidden_size

    try:
        mc = load_model_config(bcfg)  # task type, layers and heads of the adapter config
    except BackboneError as exc:
        raise BackboneError(f"the prompt's backbone {name!r} has no readable model config here, which the adapter "
                            f"config needs (task type, layers, heads): {exc}") from exc
    L, H = prompt.shape
    hidden = model_hidden_size(mc)
    if hidden is not None and hidden != H:
        raise ArtifactError(f"the prompt has hidden size {H}, the backbone {name!r} has {hidden}: the "
                            "run's files disagree. Fix: export from the run that trained this prompt")
    config = adapter_config(L, H, encoder_decoder=bool(getattr(mc, "is_encoder_decoder", False)),
                            base_model=name,
                            num_layers=_first_attr(mc, "num_hidden_layers", "num_layers", "n_layer"),
                            num_attention_heads=_first_attr(mc, "num_attention_heads", "n_head", "num_heads",
                                                            "encoder_attention_heads"))
    info = {**info, "task_type": config["task_type"], "prompt_len": L, "hidden": H, "run_dir": str(run)}
    prefix = (run_cfg.get("backbone") or {}).get("answer_prefix") or ""
    if prefix:  # the adapter holds the prompt only: a user's inputs need the same separator
        info["answer_prefix"] = prefix
        log.warning("the run put backbone.answer_prefix %r after every input: append it to your inputs "
                    "when using this adapter (recorded in ipt_export.json)", prefix)
    write_adapter(out, prompt, config, info)
    return info


def _first_attr(obj, *names):
    # PEFT fills num_layers / num_attention_heads / token_dim from the first of these the config has.
    for n in names:
        v = getattr(obj, n, None)
        if v is not None:
            return int(v)
    return None


def _run_config(run: Path) -> dict:
    """The raw dict of the first saved config of the run (read as YAML: a config of an older or newer
    version of the project still yields its backbone and paths), {} when there is none."""
    for rel in RUN_CONFIGS:
        if (run / rel).is_file():
            return _read_yaml(run / rel)
    return {}


def _backbone_name(section: dict) -> str | None:
    if section.get("arch"):
        return f"arch:{section['arch']}"
    return section.get("name_or_path")


def _backbone_config(name: str | None, run_cfg: dict, run: Path) -> tuple[str, BackboneConfig]:
    """(name, config) of the backbone the prompt was trained on: the name recorded with the prompt
    (else the run config's); the run config's section when it names the same one (its cache_dir
    finds converted checkpoints), else a config built from the name."""
    import dataclasses

    section = run_cfg.get("backbone") or {}
    if name is None:
        name = _backbone_name(section)
    if name is None:
        raise ArtifactError(f"{run}: cannot tell which backbone the prompt was trained on (no backbone in its "
                            "metadata and no saved config in the run). Fix: export from the run directory "
                            "that holds the config written by ipt pt / the sweeps")
    if _backbone_name(section) == name:
        known = {f.name for f in dataclasses.fields(BackboneConfig)}
        return name, BackboneConfig(**{k: v for k, v in section.items() if k in known})
    if name.startswith("arch:"):
        return name, BackboneConfig(arch=name[len("arch:"):])
    return name, BackboneConfig(name_or_path=name)


def _prompts_dirs(run: Path, run_cfg: dict) -> list[Path]:
    """Where stage 0 wrote its prompts: `msf.prompts_dir` (cwd-relative, as everywhere), then RUN_DIR/prompts."""
    dirs = []
    configured = (run_cfg.get("msf") or {}).get("prompts_dir")
    if configured:
        dirs.append(Path(configured).expanduser().resolve())
    if run / "prompts" not in dirs:
        dirs.append(run / "prompts")
    return dirs


def _stage0_prompt(run: Path, run_cfg: dict, task: str) -> tuple[torch.Tensor, dict]:
    dirs = _prompts_dirs(run, run_cfg)
    for pdir in dirs:
        path = find_prompt(pdir, task)  # ArtifactError when both a file and an adapter directory exist
        if path.exists():
            prompt, meta = load_prompt(path)
            info = {"source": "stage0", "task": task, "prompt_file": str(path), "backbone": meta.get("backbone")}
            info.update({k: meta.get(k) for k in ("metric", "dev_score", "test_score", "lr", "seed", "job_id")
                         if meta.get(k) is not None})
            return prompt, info
    have = sorted({p.stem for pdir in dirs if pdir.is_dir() for p in pdir.glob("*.safetensors")}
                  | {p.parent.name for pdir in dirs if pdir.is_dir() for p in pdir.glob(f"*/{ADAPTER_CONFIG}")})
    where = " or ".join(str(p) for p in dirs)
    raise ArtifactError(f"no stage-0 prompt for task {task!r} in {where}; prompts there: {have or 'none'}. "
                        "Fix: pick one of those tasks, or run stage 0 (ipt pt / the PT sweep) for this task")


def _dev_key(r: dict) -> tuple:
    """Sort key, best first: the highest dev score; ties to the smaller lr, then a fixed order."""
    dev = r.get("best_dev")
    dev = dev if isinstance(dev, (int, float)) and math.isfinite(dev) else -math.inf
    return (-dev, r.get("lr") if r.get("lr") is not None else math.inf,
            _SETTING_ORDER.get(r.get("setting"), 9), r.get("data_seed") or 0, r["job_id"])


def _ist_results(run: Path) -> tuple[Path, list[dict], str]:
    """(results file, its IST records with the MSF decoder, layout): the IST sweep's
    (`ist_sweep/`), else the single-process `ipt ist`'s (`ist/`)."""
    sweep = run / "ist_sweep" / "results.jsonl"
    if sweep.is_file() or not (run / "ist" / "results.jsonl").is_file():
        return sweep, [r for r in read_jsonl(sweep) if r.get("role") == "ist" and r.get("decoder") == "msf"], "sweep"
    single = run / "ist" / "results.jsonl"
    return single, [r for r in read_jsonl(single) if r.get("kind") == "ist" and r.get("decoder") == "msf"], "single"


def _msf_checkpoint(run: Path, layout: str, d: int) -> Path:
    """The MSF checkpoint the IST jobs at `d` used: `sweep.dims[d]` of the sweep's config.yaml, or
    `ist.msf_checkpoint` (default RUN_DIR/msf) of `ipt ist`'s ist_config.yaml."""
    if layout == "single":
        f = run / "ist_config.yaml"
        configured = (_read_yaml(f).get("ist") or {}).get("msf_checkpoint") if f.is_file() else None
        return Path(configured).expanduser() if configured else run / "msf"
    f = run / "ist_sweep" / "config.yaml"
    if not f.is_file():
        raise ArtifactError(f"{f} is missing: it maps each d to the MSF checkpoint the IST sweep used. "
                            "Fix: run the IST sweep into this run directory (it writes config.yaml)")
    dims = (_read_yaml(f).get("sweep") or {}).get("dims") or {}
    ckpt = dims.get(d, dims.get(str(d)))
    if ckpt is None:
        raise ArtifactError(f"{f}: sweep.dims has no MSF checkpoint for d={d} (has {sorted(dims)}); cannot "
                            "rebuild Dec(z). Fix: restore the sweep's config.yaml")
    ckpt = Path(ckpt).expanduser()
    return ckpt if ckpt.is_absolute() else run / ckpt  # the sweep takes dims relative to output_dir


def _ist_prompt(run: Path, task: str, d: int) -> tuple[torch.Tensor, dict]:
    results, records, layout = _ist_results(run)
    if not records:
        raise ArtifactError(f"no IST results with the MSF decoder in {results}. Fix: run the IST sweep "
                            "(ray_jobs/ist_sweep.py or ipt quickstart) or ipt ist into this run directory, or drop "
                            "--d to export the stage-0 prompt")
    mine = [r for r in records if r.get("task") == task]
    if not mine:
        raise ArtifactError(f"no IST result for task {task!r} in {results}; tasks there: "
                            f"{sorted({r.get('task') for r in records})}. Fix: pick one of those tasks")
    at_d = [r for r in mine if r.get("d") == d]
    if not at_d:
        raise ArtifactError(f"no IST result for task {task!r} at d={d} in {results}; its intrinsic dimensions "
                            f"there: {sorted({r.get('d') for r in mine})}. Fix: pass one of those as --d")
    best = min(at_d, key=_dev_key)
    if layout == "sweep":
        z_file = results.parent / (best.get("param_file") or f"params/{best['job_id']}.safetensors")
    else:
        z_file = results.parent / "z" / f"{best['job_id']}.safetensors"
    if not z_file.is_file():
        raise ArtifactError(f"{z_file} (z of IST job {best['job_id']}) is missing; the IST output is incomplete. "
                            "Fix: run the IST stage again into this run directory (it redoes only what is missing)")
    from safetensors.torch import load_file

    z = next(iter(load_file(str(z_file)).values())).float().view(1, -1)  # (1, d)
    ckpt = _msf_checkpoint(run, layout, d)
    decoder, meta = load_decoder(ckpt)
    if z.shape[1] != meta["d"]:
        raise ArtifactError(f"{z_file}: z has {z.shape[1]} entries, the MSF checkpoint {ckpt} has d={meta['d']}: "
                            "the checkpoint was replaced after IST ran. Fix: point the config at the checkpoint "
                            "IST used")
    with torch.no_grad():
        prompt = decoder.eval()(z)[0]  # (1, d) -> (L, H), as the IST jobs compute it
    info = {"source": "ist", "task": task, "d": d, "job_id": best["job_id"], "setting": best.get("setting"),
            "data_seed": best.get("data_seed"), "lr": best.get("lr"), "metric": best.get("metric"),
            "dev_score": best.get("best_dev"), "test_score": best.get("test"), "params_file": str(z_file),
            "msf_checkpoint": str(ckpt), "candidates": len(at_d),
            "backbone": best.get("backbone") or meta.get("backbone")}
    return prompt, info


def _read_yaml(f: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(f.read_text(encoding="utf-8-sig")) or {}
    except yaml.YAMLError as exc:
        raise ArtifactError(f"{f}: not valid YAML ({exc}); the run's saved config is damaged") from exc
    return data if isinstance(data, dict) else {}
