"""Training rows padded once per pack and gathered by index every step, in length buckets.

`train_pack` used to collate every step from Python token lists (per-row padding and one
host-to-device copy of the whole batch per step) and padded every row of a mixed-task pack to
the longest. Here the distinct training splits of a pack are collated once (`Backbone.collate_train`,
the one collation), kept on the model's device, and a step is:
  - the jobs' row indices (host ints from their seeded streams), sorted by length when buckets > 1;
  - cut into at most `buckets` contiguous length buckets (fewer when padding is already small or a
    bucket would get fewer than `MIN_BUCKET_ROWS` rows), then into chunks of at most `max_rows`;
  - per chunk, one `index_select` on the device and a slice to the chunk's own longest row, plus
    where its target tokens are (`target_rows`, `target_pos`, from host lengths) so that
    `Backbone.token_losses` picks them without a `nonzero` (a host wait on CUDA).
Lengths live on the host, so nothing here reads a device value or waits for the device: the row
indices go over from pinned memory, and the per-job target-token counts are summed on the device.

Each chunk divides by the whole step's per-job token counts, so the chunks' losses sum to the
same per-job token means, and the same gradients, as one forward over the unsorted batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import torch

from ipt_dist.data.batching import TokenizedSplit
from ipt_dist.modeling.backbone import Backbone

# A bucket is a forward (and backward) of its own: below this many token positions its fixed cost
# (per-layer host work, kernel launches) outweighs the padding it saves. Measured with
# bench/ist_throughput.py --mode real: tiny-t5 PT at K = 16 (64 rows, ~2.9k positions) ran 1.5x
# slower in 4 buckets than in one; compute-bound steps (SmolLM2, large K) gain what padding they lose.
MIN_BUCKET_POSITIONS = 2048
TARGET_PADDING = 0.10  # stop splitting once padding is at most this share of real tokens


@dataclass
class StepBatch:
    """One step's rows: forward chunks (each with "group", the job index per row), the per-job
    target-token counts over all chunks, and the real / processed token positions (host ints; 0
    where not counted)."""

    chunks: list[dict[str, torch.Tensor]]
    counts: torch.Tensor  # (K,)
    tokens: int = 0
    padded_tokens: int = 0

    @property
    def padding(self) -> float:
        """Share of processed token positions that are padding."""
        return 1.0 - self.tokens / self.padded_tokens if self.padded_tokens else 0.0


class PaddedRows:
    """The training splits of a pack, padded once, on the backbone's device."""

    def __init__(self, backbone: Backbone, splits: list[TokenizedSplit]) -> None:
        self.device = backbone.device
        self.decoder_only = not backbone.is_encoder_decoder
        self._start: dict[int, int] = {}  # id(split) -> first row in the pool
        inputs: list[list[int]] = []
        targets: list[list[int]] = []
        for s in splits:
            if id(s) not in self._start:
                self._start[id(s)] = len(inputs)
                inputs += s.inputs
                targets += s.targets
        self.in_len = [len(x) for x in inputs]
        self.tgt_len = [len(t) for t in targets]
        full = backbone.collate_train(inputs, targets) if inputs else {}
        self.tensors = {k: v.to(self.device) for k, v in full.items()}
        self._tgt_len = torch.tensor(self.tgt_len, dtype=torch.float32, device=self.device)

    def row(self, split: TokenizedSplit, i: int) -> int:
        """Pool index of row `i` of `split` (a split given to the constructor)."""
        return self._start[id(split)] + i

    def _widths(self, r: int) -> tuple[int, int]:
        """(input-side width, label width) of pool row r."""
        if self.decoder_only:  # one sequence [input, target]: every tensor has the same width
            w = self.in_len[r] + self.tgt_len[r]
            return w, w
        return self.in_len[r], self.tgt_len[r]

    def gather(self, rows: list[int], groups: list[int], num_groups: int, *, buckets: int = 1,
               max_rows: int | None = None) -> StepBatch:
        """The step batch of pool `rows`, row j belonging to job `groups[j]`.

        Args:
            buckets: the most length buckets the rows are split into (1: one bucket, padded to the
                longest row of the step).
            max_rows: the most rows in one forward chunk (None: no limit).
        """
        # One bucket keeps the given (job-major) order: the rows and results of a step are then exactly
        # those of one collated batch; buckets need the rows sorted by length.
        order = (sorted(range(len(rows)), key=lambda j: (sum(self._widths(rows[j])), j)) if buckets > 1
                 else range(len(rows)))
        srows = [rows[j] for j in order]
        sgroups = [groups[j] for j in order]
        widths = [self._widths(r) for r in srows]
        both = not self.decoder_only  # encoder-decoders process input and label positions
        real = sum(a + b * both for a, b in widths)
        cuts = _bucket_cuts(widths, buckets, real, both)
        bounds = []
        for a, b in pairwise(cuts):
            step = max_rows or (b - a)
            bounds += [(s, min(s + step, b)) for s in range(a, b, step)]
        index, group = self._to_device(srows), self._to_device(sgroups)
        counts = torch.zeros(num_groups, device=self.device).index_add_(0, group, self._tgt_len[index])
        chunks, padded = [], 0
        for a, b in bounds:
            w_in = max(w[0] for w in widths[a:b])
            w_lab = max(w[1] for w in widths[a:b])
            idx = index[a:b]
            chunk = {k: t[:, : (w_lab if k == "labels" else w_in)].index_select(0, idx)
                     for k, t in self.tensors.items()}
            chunk["group"] = group[a:b]
            chunk["target_rows"], chunk["target_pos"] = self._targets(srows[a:b])
            chunks.append(chunk)
            padded += (b - a) * (w_in + w_lab * both)
        return StepBatch(chunks, counts, real, padded)

    def _targets(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Where the chunk's target tokens are, from host lengths: (chunk row, position in the
        unprefixed `labels` row) of each, row-major, as `(labels != -100).nonzero()` would give them,
        so `Backbone.token_losses` need not ask the device (a nonzero is a host wait on CUDA)."""
        tgt = torch.tensor([self.tgt_len[r] for r in rows], dtype=torch.long)
        row = torch.repeat_interleave(torch.arange(len(rows)), tgt)
        within = torch.arange(len(row)) - torch.repeat_interleave(torch.cumsum(tgt, 0) - tgt, tgt)
        if self.decoder_only:  # one sequence [input, target]: a row's targets start after its input
            within += torch.tensor([self.in_len[r] for r in rows], dtype=torch.long)[row]
        return self._to_device(row), self._to_device(within)

    def _to_device(self, values: list[int] | torch.Tensor) -> torch.Tensor:
        t = values if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=torch.long)
        return to_device_async(t, self.device)


def to_device_async(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without the host waiting for the device (pinned on CUDA: a copy from
    pageable memory first waits for the stream's queued work, and a tensor built on the device blocks)."""
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def _padded(widths: list[tuple[int, int]], cuts: list[int], both: bool) -> int:
    """Token positions processed when sorted rows are cut at `cuts` (each bucket padded to its
    longest); `both`: label positions count too (encoder-decoders)."""
    return sum((b - a) * (max(w[0] for w in widths[a:b]) + both * max(w[1] for w in widths[a:b]))
               for a, b in pairwise(cuts))


def _bucket_cuts(widths: list[tuple[int, int]], buckets: int, real: int, both: bool) -> list[int]:
    """Cut points of length-sorted rows into equal-count buckets: the fewest (up to `buckets`, each
    of at least MIN_BUCKET_POSITIONS positions) whose padding is within TARGET_PADDING of the real
    tokens, else the count that pads least."""
    n = len(widths)
    best_cost, best = _padded(widths, [0, n], both), [0, n]
    for b in range(2, min(buckets, n) + 1):
        if best_cost <= (1 + TARGET_PADDING) * real:
            break
        cuts = [round(i * n / b) for i in range(b + 1)]
        if min(_padded(widths, cuts[i:i + 2], both) for i in range(b)) < MIN_BUCKET_POSITIONS:
            break  # more buckets only make them smaller
        cost = _padded(widths, cuts, both)
        if cost < best_cost:
            best_cost, best = cost, cuts
    return best
