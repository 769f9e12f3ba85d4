"""Task-balanced multi-task sampling, deterministic and shardable across ranks.

An epoch is one global sequence of (task, example) pairs of length `sum(task sizes)`.
Tasks are drawn with probability p_i ∝ n_i^(1/T): T = 1 is proportional to task size (the
reference), large T approaches uniform over tasks. Within a task, examples follow an
epoch-wise permutation, so every example is used before any repeats. The sequence depends
only on (seed, epoch), never on the world size: global batch s is positions
[s*G, (s+1)*G) and rank r takes its contiguous share of each global batch, so ranks are
disjoint and 1 worker or N workers see the same global batches.
"""

from __future__ import annotations

import torch


def task_probabilities(sizes: list[int], temperature: float) -> torch.Tensor:
    if temperature <= 0:
        raise ValueError(f"msf.temperature must be > 0, got {temperature}")
    n = torch.tensor(sizes, dtype=torch.float64)
    if (n <= 0).any():
        raise ValueError(f"every task needs at least one training example, sizes {sizes}")
    w = n ** (1.0 / temperature)
    return w / w.sum()


class TaskBalancedSampler:
    """Yields this rank's (task index, example index) pairs for each global step."""

    def __init__(self, sizes: list[int], global_batch: int, *, temperature: float = 1.0, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by world size {world_size}")
        self.sizes, self.global_batch = list(sizes), global_batch
        self.temperature, self.seed = temperature, seed
        self.rank, self.world_size = rank, world_size
        self.probs = task_probabilities(self.sizes, temperature)
        self.epoch_len = max(sum(self.sizes), global_batch)
        self.step = 0  # global steps already drawn
        self._cache: tuple[int, list[tuple[int, int]]] | None = None

    def _epoch(self, epoch: int) -> list[tuple[int, int]]:
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        tasks = torch.multinomial(self.probs, self.epoch_len, replacement=True, generator=g).tolist()
        perms = [torch.randperm(n, generator=g).tolist() for n in self.sizes]
        cursor = [0] * len(self.sizes)
        seq = []
        for t in tasks:
            seq.append((t, perms[t][cursor[t] % self.sizes[t]]))
            cursor[t] += 1
        self._cache = (epoch, seq)
        return seq

    def global_batch_at(self, step: int) -> list[tuple[int, int]]:
        """All G pairs of global step `step` (rank-independent)."""
        per_epoch = self.epoch_len // self.global_batch
        epoch, pos = divmod(step, per_epoch)
        seq = self._epoch(epoch)
        return seq[pos * self.global_batch : (pos + 1) * self.global_batch]

    def next_batch(self) -> list[tuple[int, int]]:
        """This rank's share of the next global batch; advances the state."""
        full = self.global_batch_at(self.step)
        share = self.global_batch // self.world_size
        self.step += 1
        return full[self.rank * share : (self.rank + 1) * share]

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed, "temperature": self.temperature, "sizes": self.sizes}

    def load_state_dict(self, state: dict) -> None:
        if state["sizes"] != self.sizes or state["seed"] != self.seed:
            raise ValueError("sampler state belongs to another task set or seed; cannot resume with it")
        self.step = int(state["step"])
