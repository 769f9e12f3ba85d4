"""Where a training step's time goes: a torch.profiler split by op category, as shares of wall time.

Used by `ist_throughput.py --profile` and `msf_throughput.py --profile`. Each op's *self* time
(device time on a GPU, CPU time otherwise) goes to the first category whose keys its name contains:

  communication  NCCL / gloo collectives
  attention      SDPA / flash / softmax kernels (SDPA's math path on CPU runs bmm: counted as matmul)
  matmul         mm, addmm, bmm, linear, einsum, ...
  optimizer      Adam, _foreach_* kernels
  elementwise    every other aten:: op (adds, casts, copies, indexing, norms, the loss, ...)
  host-other     the rest of the wall time: Python, autograd bookkeeping, the data path, and (on a
                 GPU) the time the device waits for the host. High here means launch- or host-bound.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

CATEGORIES = [
    ("communication", ("nccl", "gloo", "all_reduce", "allreduce", "all_gather", "allgather", "reduce_scatter",
                       "c10d")),
    ("attention", ("attention", "sdpa", "flash", "aten::softmax", "aten::_softmax", "_efficient")),
    ("matmul", ("mm", "matmul", "linear", "gemm", "addmm", "bmm", "baddbmm", "einsum")),
    ("optimizer", ("adam", "_foreach", "optimizer")),
]
SPLIT = [c for c, _ in CATEGORIES] + ["elementwise", "host-other"]


def categorize(op: str) -> str:
    """The category of a profiled op name ("host-other" for non-aten events)."""
    low = op.lower()
    if low.startswith("autograd::"):  # the engine's per-node bookkeeping ("evaluate_function: MmBackward0")
        return "host-other"
    cat = next((c for c, keys in CATEGORIES if any(k in low for k in keys)), None)
    if cat:
        return cat
    return "elementwise" if low.startswith("aten::") else "host-other"


def profile_split(run: Callable[[Callable[[], None]], None], steps: int, gpu: bool, top: int = 15) -> dict:
    """Profile `run(stop)`, which runs `steps` training steps and may call `stop()` to end the
    profiled span early (e.g. before an evaluation). Returns {"steps", "wall_s_per_step", "shares"
    (category -> share of the span's wall time, summing to 1), "busy_share" (GPU: device-busy share
    of wall), "top" (the ops with the most self time)}."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    if gpu:
        torch.cuda.synchronize()
    prof = profile(activities=acts)
    span: dict[str, float] = {}

    def stop() -> None:
        if "end" not in span:
            if gpu:
                torch.cuda.synchronize()
            span["end"] = time.perf_counter()
            prof.stop()

    prof.start()
    span["start"] = time.perf_counter()
    run(stop)
    stop()
    wall_us = (span["end"] - span["start"]) * 1e6
    ops = []
    for e in prof.key_averages():
        if gpu:
            if e.device_type != DeviceType.CPU:
                continue  # kernels are counted through the ops that launched them
            us = getattr(e, "self_device_time_total", None)
            us = us if us is not None else getattr(e, "self_cuda_time_total", 0)
        else:
            us = e.self_cpu_time_total
        if us > 0:
            ops.append((e.key, float(us), int(e.count)))
    shares = dict.fromkeys(SPLIT, 0.0)
    for name, us, _ in ops:
        cat = categorize(name)
        if cat != "host-other":  # non-aten events' self time is host work: counted in the remainder
            shares[cat] += us / wall_us
    busy = sum(shares.values())
    if busy > 1:  # profiler overlap (nested threads): scale to the wall
        shares = {k: v / busy for k, v in shares.items()}
    shares["host-other"] = max(0.0, 1.0 - sum(shares.values()))
    total = sum(us for _, us, _ in ops) or 1.0
    return {"steps": steps, "wall_s_per_step": wall_us / 1e6 / steps, "shares": shares,
            "busy_share": min(1.0, busy) if gpu else None,
            "top": [{"op": n, "self_ms_per_step": us / 1e3 / steps, "share_of_op_time": us / total,
                     "category": categorize(n), "calls": c} for n, us, c in sorted(ops, key=lambda o: -o[1])[:top]]}


def format_split(pr: dict, title: str) -> str:
    """The profile as printed lines: one summary line and a table of the top ops."""
    busy = f", device busy {100 * pr['busy_share']:.0f}% of wall" if pr.get("busy_share") is not None else ""
    shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(pr["shares"].items(), key=lambda kv: -kv[1]))
    head = f"\n# profile {title} ({pr['steps']} steps, {pr['wall_s_per_step']:.3f} s/step{busy}): share of wall: {shares}"
    lines = [head, "| op | category | self ms/step | share of op time | calls |", "|---|---|---|---|---|"]
    lines += [f"| {o['op']} | {o['category']} | {o['self_ms_per_step']:.2f} | {100 * o['share_of_op_time']:.1f}% | "
              f"{o['calls']} |" for o in pr["top"]]
    return "\n".join(lines)
