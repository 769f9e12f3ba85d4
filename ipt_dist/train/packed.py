"""Train K prompt-tuning jobs (PT or IST) at once on one frozen backbone.

Each batch row carries its own job's prompt (`P_k` for PT, `Dec(z_k)` for IST); the loss,
the optimiser state, the learning rate, the gradient clipping, the schedule, the data order
and the best-dev tracking are all per job. K = 1 is the plain one-job mode, and a pack of K
gives the same results as K separate runs with the same seeds (dropout off).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ipt_dist.config import IPTConfig
from ipt_dist.data.batching import TokenizedTask
from ipt_dist.modeling.autoencoder import PromptDecoder
from ipt_dist.modeling.backbone import Backbone
from ipt_dist.train.best import BestTracker, dev_mean
from ipt_dist.train.optim import BatchedAdamW, linear_warmup_decay, warmup_steps_for
from ipt_dist.train.rows import PaddedRows, StepBatch
from ipt_dist.train.steps import evaluate_groups, packed_step

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One PT or IST run: a task, a learning rate, a seed (init and data order)."""

    job_id: str
    task: str
    kind: str = "pt"  # "pt" | "ist"
    lr: float = 1e-4
    seed: int = 42
    grad_clip: float = 0.1
    params: dict = field(default_factory=dict)  # extra fields recorded with the result (d, data_seed, ...)


@dataclass
class PackSettings:
    """What all jobs of one pack share (the sweep groups jobs by these)."""

    steps: int = 1000
    batch_size: int = 8
    warmup_ratio: float = 0.06
    eval_every: int = 100
    init_std: float = 0.02
    init: str = "random"  # PT only: "random" = N(0, init_std); "vocab" = embeddings of sampled tokens
    init_vocab_top: int = 5000  # "vocab" samples among the first this many token ids
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    max_rows: int | None = None  # split the packed batch into forward chunks of this many rows
    length_buckets: int = 1  # the most length buckets (forwards) a step's rows are cut into; 1: none
    eval_batch_size: int = 32
    eval_max_examples: int | None = None

    @classmethod
    def from_config(cls, cfg: IPTConfig, stage: str) -> PackSettings:
        """The settings of stage `stage` ("pt" or "ist") of `cfg`: its schedule fields and the
        backbone's eval batch size and length buckets (`init` / `init_vocab_top` exist for PT only; IST keeps the defaults).

        Raises:
            ValueError: another stage (MSF trains one autoencoder, not a pack of jobs).
        """
        if stage not in ("pt", "ist"):
            raise ValueError(f"PackSettings.from_config: stage must be 'pt' or 'ist', got {stage!r}")
        s = getattr(cfg, stage)
        init = {"init": s.init, "init_vocab_top": s.init_vocab_top} if stage == "pt" else {}
        return cls(steps=s.steps, batch_size=s.batch_size, warmup_ratio=s.warmup_ratio, eval_every=s.eval_every,
                   init_std=s.init_std, adam_eps=s.adam_eps, weight_decay=s.weight_decay,
                   eval_batch_size=cfg.backbone.eval_batch_size, length_buckets=cfg.backbone.length_buckets, **init)


@dataclass
class JobResult:
    job: Job
    metric: str
    best_dev: float
    best_step: int
    test: float
    dev_curve: list[tuple[int, float]]
    loss_curve: list[tuple[int, float]]
    best_param: torch.Tensor  # (L, H) prompt for PT, (d,) z for IST
    seconds: float = 0.0

    def record(self) -> dict:
        """The JSON-able result line (without the tensor)."""
        j = self.job
        return {"job_id": j.job_id, "task": j.task, "kind": j.kind, "lr": j.lr, "seed": j.seed, **j.params,
                "metric": self.metric, "best_dev": self.best_dev, "best_step": self.best_step, "test": self.test,
                "dev_curve": self.dev_curve, "loss_curve": self.loss_curve, "seconds": self.seconds}


class _JobStream:
    """Endless epoch-shuffled indices of one job's training split, seeded by the job alone."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.gen = n, torch.Generator().manual_seed(seed)
        self.order: list[int] = []

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if not self.order:
                self.order = torch.randperm(self.n, generator=self.gen).tolist()
            out.append(self.order.pop(0))
        return out


def init_params(jobs: list[Job], shape: tuple[int, ...], std: float, *, embedding: torch.Tensor | None = None,
                vocab_top: int = 5000) -> torch.Tensor:
    """Starting parameters per job from the job's own seed: independent of what else is in the pack.

    N(0, std) by default. With `embedding` (V, H) given, a prompt of shape (L, H) starts as the
    embeddings of L tokens drawn uniformly among the first `vocab_top` ids (Lester et al. 2021:
    sampled-vocabulary init; frequent tokens come first in BPE/SentencePiece vocabularies).
    """
    rows = []
    for j in jobs:
        g = torch.Generator().manual_seed(j.seed)
        if embedding is None:
            rows.append(torch.randn(shape, generator=g) * std)
        else:
            if len(shape) != 2 or shape[1] != embedding.shape[1]:
                raise ValueError(f"vocab init needs a prompt shape (L, {embedding.shape[1]}), got {shape}")
            ids = torch.randint(0, min(vocab_top, embedding.shape[0]), (shape[0],), generator=g)
            rows.append(embedding[ids].detach().float().cpu().clone())
    return torch.stack(rows)  # (K, *shape)


def z_init_params(jobs: list[Job], d: int, std: float, origin: torch.Tensor | None = None) -> torch.Tensor:
    """IST's starting z per job: N(0, std) from the job's seed, shifted to `origin` (d,) when given
    (`ist.z_init: centroid`). (K, d)."""
    z = init_params(jobs, (d,), std)
    return z if origin is None else z + origin.float().view(1, d)


def settings_init_params(backbone: Backbone, jobs: list[Job], shape: tuple[int, ...],
                         settings: PackSettings, kind: str) -> torch.Tensor:
    """`init_params` as `settings` ask for it: vocabulary init applies to PT prompts only."""
    if kind == "pt" and settings.init == "vocab":
        emb = backbone.model.get_input_embeddings().weight
        return init_params(jobs, shape, settings.init_std, embedding=emb, vocab_top=settings.init_vocab_top)
    return init_params(jobs, shape, settings.init_std)


@dataclass
class _Pack:
    """What `_setup_pack` builds for the loop: the trainable (K, ...) parameters, how they become
    prompts, their optimiser and each job's data stream."""

    kind: str
    param: torch.Tensor  # (K, L, H) prompts for PT, (K, d) z for IST
    prompt_fn: Callable[[torch.Tensor], torch.Tensor]  # param -> (K, L, H) prompts
    opt: BatchedAdamW
    streams: list[_JobStream]
    metrics: list[str]
    rows: PaddedRows  # every job's training rows, padded once, on the device


def _setup_pack(backbone: Backbone, jobs: list[Job], data: dict[str, TokenizedTask], settings: PackSettings,
                decoder: PromptDecoder | None, prompt_len: int | None, init: torch.Tensor | None) -> _Pack:
    """Validate the pack, then build its parameters (seeded per job), optimiser and data streams.

    Raises:
        ValueError: mixed kinds in one pack, a job without data, an empty training split, IST
            without a decoder or PT without prompt_len.
    """
    kinds = {j.kind for j in jobs}
    if len(kinds) != 1:
        raise ValueError(f"a pack holds jobs of one kind, got {sorted(kinds)}")
    kind = kinds.pop()
    for j in jobs:
        if j.job_id not in data:
            raise ValueError(f"job {j.job_id} (task {j.task}) has no data")
        if len(data[j.job_id].train) == 0:
            raise ValueError(f"task {j.task}: the training split is empty")
    if kind == "ist":
        if decoder is None:
            raise ValueError("IST jobs need the frozen MSF decoder")
        decoder = decoder.to(backbone.device).requires_grad_(False)
        shape: tuple[int, ...] = (decoder.d,)
        prompt_fn = decoder
    else:
        if prompt_len is None:
            raise ValueError("PT jobs need prompt_len")
        shape = (prompt_len, backbone.hidden_size)
        prompt_fn = lambda p: p
    param = (init.clone().float() if init is not None
             else settings_init_params(backbone, jobs, shape, settings, kind)).to(backbone.device)
    param.requires_grad_(True)
    opt = BatchedAdamW(param, [j.lr for j in jobs], [j.grad_clip for j in jobs], eps=settings.adam_eps,
                       weight_decay=settings.weight_decay)
    streams = [_JobStream(len(data[j.job_id].train), j.seed) for j in jobs]
    rows = PaddedRows(backbone, [data[j.job_id].train for j in jobs])
    return _Pack(kind, param, prompt_fn, opt, streams, [data[j.job_id].info.metric for j in jobs], rows)


def _pack_batch(pack: _Pack, jobs: list[Job], data: dict[str, TokenizedTask], settings: PackSettings) -> StepBatch:
    """`batch_size` rows of every job from its own stream, gathered from the padded pool in length
    buckets; each chunk's `group` is the job index of its rows."""
    rows, groups = [], []
    for k, j in enumerate(jobs):
        split = data[j.job_id].train
        rows += [pack.rows.row(split, i) for i in pack.streams[k].take(settings.batch_size)]
        groups += [k] * settings.batch_size
    return pack.rows.gather(rows, groups, len(jobs), buckets=settings.length_buckets, max_rows=settings.max_rows)


def train_pack(backbone: Backbone, jobs: list[Job], data: dict[str, TokenizedTask], settings: PackSettings, *,
               decoder: PromptDecoder | None = None, prompt_len: int | None = None,
               init: torch.Tensor | None = None, progress: bool = False,
               on_progress: Callable[[int, int], None] | None = None) -> list[JobResult]:
    """Train every job of the pack; evaluate dev every `eval_every` steps; score test at best dev.

    Each job keeps its own best step (`train.best.BestTracker`: strictly better wins, the earliest
    step wins ties, a NaN dev score is never the best).

    Args:
        data: job_id -> the tokenized task that job trains on (jobs may use different draws).
        decoder: frozen Dec for IST jobs (all jobs of a pack share kind).
        prompt_len: L for PT jobs.
        init: (K, ...) starting parameters instead of `settings.init`'s, e.g. Dec(z*) for IPT-init PT.
        progress: a tqdm bar on the console (single-process stages).
        on_progress: called as on_progress(steps done, total steps) after every training step (a
            sweep worker forwards it, throttled, to the driver's heartbeat).
    Raises:
        ValueError: mixed kinds in one pack, a job without data, or an empty training split.
    """
    pack = _setup_pack(backbone, jobs, data, settings, decoder, prompt_len, init)
    kind, param, K = pack.kind, pack.param, len(jobs)
    warmup = warmup_steps_for(settings.steps, settings.warmup_ratio)
    best = [BestTracker() for _ in jobs]
    best_param = param.detach().clone()
    dev_curves: list[list[tuple[int, float]]] = [[] for _ in jobs]
    loss_curves: list[list[tuple[int, float]]] = [[] for _ in jobs]
    t0 = time.time()

    def evaluate(split: str, p: torch.Tensor) -> list[float]:
        with torch.no_grad():
            prompts = pack.prompt_fn(p)
        scores, _ = evaluate_groups(backbone, prompts, [data[j.job_id].split(split) for j in jobs], pack.metrics,
                                    settings.eval_batch_size, settings.eval_max_examples)
        return scores

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=settings.steps, desc=f"{kind} x{K}", leave=False)
    # Per-job training losses accumulate on the device and are read once per eval interval: no
    # host round trip per step (a `.cpu()` here waited for every CUDA step to finish).
    running = torch.zeros(K, device=param.device)
    for step in range(settings.steps):
        backbone.set_train_mode(True)
        batch = _pack_batch(pack, jobs, data, settings)
        lr_mult = linear_warmup_decay(step, settings.steps, warmup)
        running += packed_step(backbone, param, pack.prompt_fn, pack.opt, batch, lr_mult)
        if bar is not None:
            bar.update(1)
        done = step + 1
        if on_progress is not None:
            on_progress(done, settings.steps)
        if done % settings.eval_every == 0 or done == settings.steps:
            n = settings.eval_every if done % settings.eval_every == 0 else done % settings.eval_every
            sums = running.tolist()  # the one host read per interval
            for k in range(K):
                loss_curves[k].append((done, sums[k] / n))
            running.zero_()
            scores = evaluate("dev", param.detach())
            for k, s in enumerate(scores):
                dev_curves[k].append((done, s))
                if best[k].update(s, done):
                    best_param[k] = param.detach()[k]
            log.info("%s pack of %d: step %d/%d, mean dev %.4f", kind, K, done, settings.steps,
                     dev_mean(scores, [j.task for j in jobs]))
    if bar is not None:
        bar.close()
    tests = evaluate("test", best_param)
    secs = time.time() - t0
    return [
        JobResult(job=j, metric=pack.metrics[k], best_dev=best[k].best, best_step=best[k].step, test=tests[k],
                  dev_curve=dev_curves[k], loss_curve=loss_curves[k], best_param=best_param[k].cpu(),
                  seconds=secs / K)
        for k, j in enumerate(jobs)
    ]
