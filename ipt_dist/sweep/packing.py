"""Packs: which jobs share one backbone pass (one Ray task or actor call), and in what order they go.

Pure scheduling decisions over `JobSpec`s; the fan-out (`ipt_dist.distributed.fanout`) only submits
the packs in the order given here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from ipt_dist.config import IPTConfig
from ipt_dist.sweep.jobs import JobSpec

__all__ = ["describe_sizes", "group_packs", "pack_cost"]


def group_packs(jobs: list[JobSpec], pack_size: int, slots: int = 1,
                cost: Callable[[list[JobSpec]], float] | None = None) -> list[list[JobSpec]]:
    """Split jobs into packs of at most `pack_size` that share `pack_key`, in submission order.

    - Balanced: a group of n jobs becomes ceil(n / pack_size) packs of near-equal size (40 jobs at
      pack_size 32: 20 + 20, not 32 + 8, whose short pack would leave a slot idle at the end).
    - Slots filled: while there are fewer packs than `slots` (task slots the cluster runs at once),
      the largest pack is halved, so no slot idles while one pack holds many jobs.
    - Slices first, in ascending d: every pack of the smallest intrinsic dimension goes before any
      of the next (PT jobs have no d: one slice), so a sweep stopped or read part way holds whole
      low-d slices (all decoders, settings and tasks of a d) rather than a scatter of every d.
    - Longest first within a slice: ordered by `cost` (default: pack size), largest first, so the
      short packs fill the gaps at the end of the slice (LPT scheduling; the next slice's packs
      follow them, so only the last slice's tail can idle a slot).
    - Tapered: with more big packs (at least half the largest cost) than slots, the last `slots` of
      them (the last in the order) are halved, so the final wave is finer and a slot that finishes early takes more of it:
      equal-sized packs do not take equal time (evaluation decodes to different lengths), and the
      slots idle at the end was most of the measured sweep overhead (BENCHMARKS.md).
    Deterministic for equal inputs.

    Raises:
        ValueError: pack_size < 1.
    """
    if pack_size < 1:
        raise ValueError(f"pack_size must be >= 1, got {pack_size}")
    by_key: dict[tuple, list[JobSpec]] = defaultdict(list)
    for j in jobs:
        by_key[j.pack_key()].append(j)
    packs: list[list[JobSpec]] = []
    for key in sorted(by_key, key=str):
        group = sorted(by_key[key], key=lambda j: (j.task, j.data_seed, j.lr or 0.0, j.job_id))
        packs += _split_even(group, -(-len(group) // pack_size))
    while len(packs) < slots:
        big = max(range(len(packs)), key=lambda i: len(packs[i]), default=None)
        if big is None or len(packs[big]) < 2:
            break
        packs[big:big + 1] = _split_even(packs[big], 2)
    cost = cost or len

    def order(p: list[JobSpec]) -> tuple:
        return (_slice(p[0]), -cost(p))

    packs.sort(key=order)  # stable: equal keys keep the grouping order
    top = max(map(cost, packs), default=0)
    big = [i for i, p in enumerate(packs) if 2 * cost(p) >= top and len(p) > 1]
    if slots > 1 and len(big) > slots:  # taper: the last wave of big packs in halves
        last = set(big[-slots:])
        halves = [h for i in sorted(last) for h in _split_even(packs[i], 2)]
        packs = sorted([p for i, p in enumerate(packs) if i not in last] + halves, key=order)
    return packs


def _slice(job: JobSpec) -> float:
    """A pack's slice: the d of its pack key (PT packs, whose key has none even when IPT-initialised
    PT jobs carry a d, all in one slice first)."""
    key = job.pack_key()
    return -1 if len(key) < 2 or key[1] is None else key[1]


def _split_even(group: list[JobSpec], n: int) -> list[list[JobSpec]]:
    """`group` in n contiguous parts whose sizes differ by at most one."""
    q, r = divmod(len(group), n)
    out, i = [], 0
    for k in range(n):
        size = q + (k < r)
        out.append(group[i : i + size])
        i += size
    return out


def pack_cost(cfg: IPTConfig) -> Callable[[list[JobSpec]], float]:
    """Relative cost of a pack for ordering: jobs x (training steps + 1); settings 1-2 only evaluate."""
    steps = {"ist": cfg.ist.steps, "pt": cfg.pt.steps, "msf_eval": 0}
    return lambda pack: len(pack) * (steps.get(pack[0].kind, 0) + 1)


def describe_sizes(packs: list[list[JobSpec]]) -> str:
    """'20, 20, 6' (the 8 largest, then the number of packs) for the driver's log."""
    sizes = sorted((len(p) for p in packs), reverse=True)
    return ", ".join(map(str, sizes[:8])) + (f", ... ({len(sizes)} packs)" if len(sizes) > 8 else "")
