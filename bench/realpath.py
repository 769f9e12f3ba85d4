"""The real training path for the benches: real tokenized task data and `train_pack` itself, timed.

Shared by `ist_throughput.py --mode real` and `peer_peft.py`. Data come through the project's own
loaders (`load_tasks` + `tokenize_tasks`): the synthetic demo tasks (`--data demo`, written to a
temporary folder), the shared real CrossFit/NI tasks (`--data shared`: ../shared/data/tasks next to
the checkout) or any task folder. Training and evaluation are timed apart: `train_pack` is called
with `eval_every = steps`, so it evaluates dev (and then test) once, after its last step, and its
`on_progress` callback marks where training ends.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ipt_dist.data.batching import TokenizedTask, tokenize_tasks
from ipt_dist.data.tasks import list_tasks, load_tasks, write_demo_tasks
from ipt_dist.train.packed import Job, PackSettings, train_pack
from ipt_dist.train.rows import PaddedRows

SHARED_TASKS = ROOT.parent / "shared" / "data" / "tasks"


class BenchError(Exception):
    """A bench argument that cannot work; the message says what and the fix."""


def task_dir(spec: str) -> Path:
    """'demo' (written to a temporary folder), 'shared' (../shared/data/tasks) or a folder of tasks."""
    if spec == "demo":
        d = Path(tempfile.mkdtemp(prefix="bench_demo_"))
        write_demo_tasks(d, n_train=32, n_dev=16, n_test=32)
        return d
    d = SHARED_TASKS if spec == "shared" else Path(spec)
    if not d.is_dir():
        raise BenchError(f"--data {spec}: {d} is not a folder of tasks. Fix: --data demo (synthetic tasks), or "
                         "put the shared real tasks at ../shared/data/tasks next to this checkout")
    return d


def load_data(backbone, spec: str, n_tasks: int, max_examples: int | None = 64) -> dict[str, TokenizedTask]:
    """The first `n_tasks` tasks (sorted names) of `spec`, tokenized by `backbone` as the stages do."""
    root = task_dir(spec)
    names = list_tasks(root)[:n_tasks]
    if len(names) < n_tasks:
        raise BenchError(f"--data {spec}: {root} holds {len(names)} tasks, {n_tasks} asked. Fix: ask for fewer")
    raw = load_tasks(root, names, max_examples=max_examples)
    return tokenize_tasks(raw, backbone, prefix=True)


def grid(kind: str, data: dict[str, TokenizedTask], lrs: list[float], n_jobs: int | None = None) -> list[Job]:
    """Jobs of a PT/IST grid: every task x every lr (or the first `n_jobs`, cycling over the grid)."""
    cells = [(t, lr) for t in data for lr in lrs]
    n = n_jobs or len(cells)
    return [Job(job_id=f"{kind}-{i}", task=cells[i % len(cells)][0], kind=kind, lr=cells[i % len(cells)][1],
                seed=1000 + i, grad_clip=1.0) for i in range(n)]


class BatchRecorder:
    """Records the row lengths and processed positions of every training step `train_pack` gathers
    (`PaddedRows.gather`: the FLOP count needs them, and padding is counted per length bucket).
    Wraps the class's method; restores it on exit."""

    def __init__(self, backbone, prompt_len: int) -> None:
        self.backbone, self.prompt_len = backbone, prompt_len
        self.lengths: list[dict[str, torch.Tensor]] = []
        self.positions: list[int] = []
        self.chunks: list[int] = []  # forwards per step

    def __enter__(self) -> Self:
        inner = PaddedRows.gather
        encdec, L = self.backbone.is_encoder_decoder, self.prompt_len

        def recording(pool, rows, *args, **kwargs):
            step = inner(pool, rows, *args, **kwargs)
            # From host lists and tensor shapes only: reading the device tensors would sync every step.
            n_in = torch.tensor([pool.in_len[r] for r in rows])
            tgt = torch.tensor([pool.tgt_len[r] for r in rows])
            self.lengths.append({"enc": L + n_in + (0 if encdec else tgt), "dec": tgt if encdec else 0 * tgt,
                                 "tgt": tgt})
            self.positions.append(sum(c["input_ids"].shape[0] * (L + c["input_ids"].shape[1])
                                      + (c["labels"].numel() if encdec else 0) for c in step.chunks))
            self.chunks.append(len(step.chunks))
            return step

        PaddedRows.gather = recording
        return self

    def __exit__(self, *exc) -> None:
        PaddedRows.gather = _GATHER


_GATHER = PaddedRows.gather  # the unwrapped method, restored on exit


def timed_train_pack(backbone, jobs: list[Job], data: dict[str, TokenizedTask], settings: PackSettings, *,
                     warmup: int, decoder=None, prompt_len: int | None = None,
                     on_trained: Callable[[], None] | None = None) -> dict:
    """Run `train_pack` once on `data` (task name -> tokenized task; evaluation only after the last
    step) and time it. `on_trained()` is called after the last training step, before evaluation
    (the profiler stops there).

    Returns {"results", "train_s" (call start to the last step), "steady_s" (steps after `warmup`),
    "eval_s" (dev + test evaluation after the last step), "lengths"/"positions" of each step's batch}.
    """
    if settings.eval_every != settings.steps:
        raise ValueError("timed_train_pack: eval_every must equal steps (evaluation timed after training)")
    if not 0 <= warmup < settings.steps:
        raise BenchError(f"--warmup {warmup}: must be >= 0 and below --steps {settings.steps}")
    gpu = backbone.device.type == "cuda"
    marks: dict[int, float] = {}

    def on_progress(done: int, total: int) -> None:
        if done in (warmup, total):
            if gpu:
                torch.cuda.synchronize()  # only at the two marks: no per-step sync added
            marks[done] = time.perf_counter()
        if done == total and on_trained is not None:
            on_trained()

    L = prompt_len if decoder is None else decoder.prompt_len
    with BatchRecorder(backbone, L) as rec:
        t0 = time.perf_counter()
        marks[0] = t0
        results = train_pack(backbone, jobs, {j.job_id: data[j.task] for j in jobs}, settings, decoder=decoder,
                             prompt_len=prompt_len, on_progress=on_progress)
        t_end = time.perf_counter()
    if len(rec.lengths) != settings.steps:
        raise RuntimeError(f"train_pack gathered {len(rec.lengths)} batches through PaddedRows.gather for "
                           f"{settings.steps} steps: the FLOP count in bench/realpath.py needs updating")
    return {"results": results, "train_s": marks[settings.steps] - t0,
            "steady_s": marks[settings.steps] - marks[warmup], "eval_s": t_end - marks[settings.steps],
            "lengths": rec.lengths, "positions": rec.positions, "chunks": rec.chunks}


def eval_examples(jobs: list[Job], data: dict[str, TokenizedTask], cap: int | None) -> int:
    """Examples scored by one dev + one test evaluation of `jobs` (capped per job and split)."""
    n = 0
    for j in jobs:
        for split in ("dev", "test"):
            size = len(data[j.task].split(split))
            n += size if cap is None else min(size, cap)
    return n
