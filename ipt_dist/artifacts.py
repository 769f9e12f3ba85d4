"""Artifacts on disk: prompt files, MSF checkpoints, JSONL results.

Prompt file: `prompts/<task>.safetensors` holding `prompt` (L, H) fp32, with metadata
(backbone, prompt_len, hidden, task, metric, dev_score, ...).
MSF checkpoint: a directory with `autoencoder.safetensors` (encoder + decoder weights) and
`msf.json` (shapes, backbone, d, tasks, alpha, best dev). IST needs only the decoder part.
"""

from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path

import torch

from ipt_dist.errors import UserError
from ipt_dist.modeling.autoencoder import PromptAutoencoder, PromptDecoder


class ArtifactError(UserError):
    """A missing, truncated or mis-shaped artifact; the message names the file and the fix."""


def ensure_writable_dir(path: str | Path, field: str = "output_dir") -> Path:
    """Create `path` and prove it takes a write, before any expensive work starts.

    Raises:
        ArtifactError: the directory cannot be created or written (read-only, a file in the
            way, no permission, disk full), naming the field and the fix.
    """
    p = Path(path).expanduser()
    try:
        probe = p / f".write_probe_{os.getpid()}"
        _write_synced(probe, b"ok", "wb")
        probe.unlink()
    except OSError as exc:
        raise ArtifactError(f"{field}: cannot write to {p} ({exc.strerror or exc}). "
                            "Fix: choose a writable directory with free space (--out DIR)") from exc
    return p


_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def write_error(path: Path, exc: OSError) -> ArtifactError:
    """A clear error for a failed write (disk full above all): what failed, what is kept, the fix."""
    if exc.errno in _NO_SPACE:
        return ArtifactError(f"{path}: no space left on the device ({exc.strerror}). Everything finished before "
                             "is intact on disk. Fix: free space (or choose another output_dir) and run the same "
                             "command again: finished work is skipped")
    return ArtifactError(f"{path}: cannot write ({exc.strerror or exc}). Fix: check the permissions and the file "
                         "system, then run the same command again: finished work is skipped")


def _write_synced(path: Path, data: bytes, mode: str) -> None:
    """Write (mode "wb") or append ("ab") `data` and fsync it; the parent directory is created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, mode) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file, fsync, rename: `path` is either the old or the complete new file.

    Raises:
        ArtifactError: the write failed (disk full, ...); the temp file is removed.
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        _write_synced(tmp, data, "wb")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(path, exc) from exc


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    from safetensors.torch import save

    atomic_write_bytes(path, save({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                                  metadata={k: json.dumps(v) for k, v in meta.items()}))


def _load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
            return {k: f.get_tensor(k) for k in f.keys()}, meta  # noqa: SIM118 - safe_open is not iterable
    except FileNotFoundError:
        raise
    except Exception as exc:  # safetensors raises its own error types for truncated files
        raise ArtifactError(f"{path}: cannot be read ({exc}); the file is truncated or corrupt. "
                            "Fix: delete it and re-run the stage that writes it") from exc


# ------------------------------------------------------------------ prompts


def prompt_path(prompts_dir: str | Path, task: str) -> Path:
    return Path(prompts_dir) / f"{task}.safetensors"


def save_prompt(path: str | Path, prompt: torch.Tensor, **meta) -> None:
    _save_tensors(Path(path), {"prompt": prompt.float()},
                  {"prompt_len": prompt.shape[0], "hidden": prompt.shape[1], **meta})


def find_prompt(prompts_dir: str | Path, task: str) -> Path:
    """`task`'s stage-0 prompt in `prompts_dir`: the prompt file `<task>.safetensors`, or a PEFT
    PromptTuning adapter directory `<task>/` (its `adapter_config.json`); the file's path when neither exists.

    Raises:
        ArtifactError: both exist (never a silent choice).
    """
    path, adapter = prompt_path(prompts_dir, task), Path(prompts_dir) / task
    if (adapter / "adapter_config.json").is_file():
        if path.exists():
            raise ArtifactError(f"task {task!r} has two stage-0 prompts: the prompt file {path} and the PEFT adapter "
                                f"directory {adapter}. Fix: move away the one that should not be used")
        return adapter
    return path


def load_prompt(path: str | Path) -> tuple[torch.Tensor, dict]:
    """A prompt file's (L, H) prompt and metadata; a directory is read as a PEFT PromptTuning adapter
    (`ipt_dist.peft_io.read_adapter`).

    Raises FileNotFoundError or ArtifactError (unreadable, no `prompt` tensor, NaN/Inf).
    """
    path = Path(path)
    if path.is_dir():
        from ipt_dist.peft_io import read_adapter

        return read_adapter(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist; run stage 0 (ipt pt) for this task")
    tensors, meta = _load_tensors(path)
    if "prompt" not in tensors:
        raise ArtifactError(f"{path}: no tensor named 'prompt' (found {sorted(tensors)}); not a prompt file")
    p = tensors["prompt"]
    if p.dim() != 2:
        raise ArtifactError(f"{path}: prompt must be 2-D (L, H), got shape {tuple(p.shape)}")
    if not torch.isfinite(p).all():
        raise ArtifactError(f"{path}: prompt contains NaN or Inf values; re-run stage 0 for this task")
    return p, meta


def load_task_prompts(prompts_dir: str | Path, tasks: list[str], prompt_len: int, hidden: int,
                      backbone: str | None = None) -> torch.Tensor:
    """Stage-0 prompts of every training task, (T, L, H). Every problem is listed at once.

    The reference silently replaced a missing prompt by random noise; here it is an error.

    Raises:
        ArtifactError: missing, unreadable or mis-shaped prompt files, or prompts of another backbone.
    """
    problems, out = [], []
    for t in tasks:
        path = prompt_path(prompts_dir, t)
        try:
            path = find_prompt(prompts_dir, t)
            p, meta = load_prompt(path)
        except (FileNotFoundError, ArtifactError) as exc:
            problems.append(str(exc))
            continue
        if tuple(p.shape) != (prompt_len, hidden):
            problems.append(f"{path}: prompt shape {tuple(p.shape)} does not match the backbone/config "
                            f"(L={prompt_len}, H={hidden}); re-run stage 0 with this backbone and pt.prompt_len")
            continue
        if backbone is not None and meta.get("backbone") not in (None, backbone):
            where = " (adapter_config.json base_model_name_or_path)" if path.is_dir() else ""
            problems.append(f"{path}: prompt was trained on backbone {meta.get('backbone')!r}{where}, not {backbone!r}")
            continue
        out.append(p)
    if problems:
        raise ArtifactError(f"{len(problems)} problem(s) with stage-0 prompts in {prompts_dir}:\n  - "
                            + "\n  - ".join(problems))
    return torch.stack(out)


# ------------------------------------------------------------------ MSF checkpoint


def save_msf_checkpoint(out_dir: str | Path, ae: PromptAutoencoder, meta: dict) -> None:
    out = Path(out_dir)
    _save_tensors(out / "autoencoder.safetensors", ae.state_dict(), {})
    atomic_write_bytes(out / "msf.json", json.dumps({**ae.shape_dict(), **meta}, indent=2).encode())


def read_msf_meta(ckpt_dir: str | Path) -> dict:
    path = Path(ckpt_dir) / "msf.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; point ist.msf_checkpoint at a directory written by MSF")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc}); the checkpoint is truncated, re-run MSF") from exc


def load_msf_checkpoint(ckpt_dir: str | Path, *, backbone: str | None = None, hidden: int | None = None,
                        prompt_len: int | None = None) -> tuple[PromptAutoencoder, dict]:
    """Raises FileNotFoundError / ArtifactError, including a backbone or shape mismatch."""
    meta = read_msf_meta(ckpt_dir)
    problems = []
    if backbone is not None and meta.get("backbone") not in (None, backbone):
        problems.append(f"backbone: checkpoint {meta.get('backbone')!r} vs config {backbone!r}")
    if hidden is not None and meta["hidden"] != hidden:
        problems.append(f"hidden size: checkpoint {meta['hidden']} vs backbone {hidden}")
    if prompt_len is not None and meta["prompt_len"] != prompt_len:
        problems.append(f"prompt length: checkpoint {meta['prompt_len']} vs pt.prompt_len {prompt_len}")
    if problems:
        raise ArtifactError(f"MSF checkpoint {ckpt_dir} does not fit this run: " + "; ".join(problems)
                            + ". Fix: use the checkpoint trained for this backbone and prompt length")
    path = Path(ckpt_dir) / "autoencoder.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; the MSF checkpoint is incomplete, re-run MSF")
    tensors, _ = _load_tensors(path)
    ae = PromptAutoencoder(meta["d"], meta["prompt_len"], meta["hidden"], meta["mid_dim"])
    try:
        ae.load_state_dict(tensors)
    except RuntimeError as exc:
        raise ArtifactError(f"{path}: weights do not match msf.json ({exc})") from exc
    return ae, meta


def msf_training_tasks(meta: dict, default: list[str]) -> list[str]:
    """The tasks an MSF checkpoint was trained on (its msf.json `tasks`; `default` for a checkpoint
    that does not record them): their prompts span the PCA baseline and give IST's centroid start."""
    return list(meta.get("tasks") or default)


def load_decoder(ckpt_dir: str | Path, **expect) -> tuple[PromptDecoder, dict]:
    ae, meta = load_msf_checkpoint(ckpt_dir, **expect)
    return ae.decoder, meta


# ------------------------------------------------------------------ JSONL


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one line and fsync: the results file is the source of truth."""
    path = Path(path)
    line = (json.dumps(_clean(record)) + "\n").encode()
    size = path.stat().st_size if path.is_file() else 0
    try:
        _write_synced(path, line, "ab")
    except OSError as exc:
        try:  # no half line left behind: the file keeps exactly its complete records
            os.truncate(path, size)
        except OSError:
            pass
        raise write_error(path, exc) from exc


def read_jsonl(path: str | Path) -> list[dict]:
    """Complete lines only: a torn last line (a killed writer) is ignored."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
