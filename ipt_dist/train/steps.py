"""Pure training and evaluation steps: plain PyTorch, no ray, mlflow or deepspeed.

Shapes: K jobs (or T tasks), B batch rows, L prompt length, H hidden size, d intrinsic dim.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ipt_dist.data.batching import TokenizedTask
from ipt_dist.metrics import compute_metric
from ipt_dist.modeling.autoencoder import PromptAutoencoder, PromptDecoder
from ipt_dist.modeling.backbone import Backbone
from ipt_dist.train.optim import BatchedAdamW
from ipt_dist.train.rows import StepBatch


def group_mean(losses: torch.Tensor, rows: torch.Tensor, row_group: torch.Tensor, num_groups: int,
               counts: torch.Tensor | None = None) -> torch.Tensor:
    """Token-mean loss per group (job or task): (M,) token losses -> (G,).

    `counts` (G,) overrides the token count of each group (used when a batch is split into
    chunks: each chunk divides by the whole batch's count so the chunks sum to the mean).
    """
    groups = row_group[rows]  # (M,)
    sums = torch.zeros(num_groups, dtype=losses.dtype, device=losses.device).index_add_(0, groups, losses)
    if counts is None:
        counts = torch.zeros(num_groups, dtype=losses.dtype, device=losses.device).index_add_(
            0, groups, torch.ones_like(losses))
    return sums / counts.clamp(min=1)


def target_token_counts(batch: dict[str, torch.Tensor], num_groups: int) -> torch.Tensor:
    """Number of loss-bearing target tokens per group in a collated batch."""
    per_row = (batch["labels"] != -100).sum(1).float()  # (B,)
    return torch.zeros(num_groups, device=per_row.device).index_add_(0, batch["group"], per_row)


def split_batch(batch: dict[str, torch.Tensor], num_groups: int, max_rows: int | None = None) -> StepBatch:
    """A collated batch as a `StepBatch`: chunks of at most `max_rows` rows, in order, unsorted."""
    B = batch["input_ids"].shape[0]
    step = max_rows or B
    chunks = [{k: v[s : s + step] for k, v in batch.items()} for s in range(0, B, step)]
    return StepBatch(chunks, target_token_counts(batch, num_groups))  # token counts not read: no device sync


def packed_step(backbone: Backbone, param: torch.Tensor, prompt_fn, optimizer: BatchedAdamW,
                batch: StepBatch, lr_mult: float) -> torch.Tensor:
    """One optimiser step of K jobs packed in `param` (K, ...); returns per-job losses (K,), on the device.

    Each chunk's `group` (rows,) says which job each row belongs to; `prompt_fn(param)` gives the
    (K, L, H) prompts. sum_k loss_k is back-propagated: row k of the gradient is job k's own. Every
    chunk divides by the step's per-job token counts (`batch.counts`), so the chunks add up to the
    per-job token means of the whole step.
    """
    K = param.shape[0]
    total = torch.zeros(K, device=param.device)
    optimizer.zero_grad()
    for chunk in batch.chunks:
        prompts = prompt_fn(param)  # (K, L, H)
        losses, rows = backbone.token_losses(prompts[chunk["group"]], chunk)
        per_job = group_mean(losses, rows, chunk["group"], K, batch.counts)  # (K,)
        per_job.sum().backward()
        total += per_job.detach()
    optimizer.step(lr_mult)
    return total


def pt_step(backbone: Backbone, prompts: torch.Tensor, optimizer: BatchedAdamW, batch, lr_mult: float,
            max_rows: int | None = None) -> torch.Tensor:
    """PT: the prompts (K, L, H) themselves train, on one collated batch."""
    return packed_step(backbone, prompts, lambda p: p, optimizer, split_batch(batch, prompts.shape[0], max_rows),
                       lr_mult)


def ist_step(backbone: Backbone, decoder: PromptDecoder, z: torch.Tensor, optimizer: BatchedAdamW, batch,
             lr_mult: float, max_rows: int | None = None) -> torch.Tensor:
    """IST: only z (K, d) trains on one collated batch; the prompt is Dec(z) with the decoder frozen."""
    return packed_step(backbone, z, decoder, optimizer, split_batch(batch, z.shape[0], max_rows), lr_mult)


LM_REDUCTIONS = ("sum", "mean")


class MSFModel(nn.Module):
    """Frozen backbone + trainable prompt autoencoder + the stage-0 prompts of the training tasks.

    `forward(batch)` builds the prompts and `inputs_embeds` itself, so under DeepSpeed ZeRO-3
    the engine's hooks gather the partitioned embedding where it is used.

    The objective of a global batch (`lm_reduction`, config `msf.lm_reduction`):
      "sum" (reference, `bartPrompt.py: MyBartPrompt_AE.forward`): sum over the batch's target tokens
            of the label-smoothed token NLL  +  alpha * MSE(P*, P);
      "mean": the token-mean of the same NLL  +  alpha * MSE(P*, P).
    The MSE is a mean over the batch's rows (each row's P*_i against its P_i) in both.
    """

    def __init__(self, backbone: Backbone, autoencoder: PromptAutoencoder, task_prompts: torch.Tensor,
                 alpha: float, lm_reduction: str = "sum") -> None:
        super().__init__()
        if lm_reduction not in LM_REDUCTIONS:
            raise ValueError(f"lm_reduction: must be one of {LM_REDUCTIONS}, got {lm_reduction!r}")
        self.backbone_model = backbone.model  # registered so DeepSpeed sees (and may shard) it
        self.autoencoder = autoencoder
        self.register_buffer("task_prompts", task_prompts, persistent=False)  # (T, L, H)
        self.alpha = alpha
        self.lm_reduction = lm_reduction
        object.__setattr__(self, "_backbone", backbone)  # not a Module: no double registration

    @property
    def backbone(self) -> Backbone:
        return self._backbone

    def lm_weight(self, global_tokens: float | torch.Tensor, replicas: int = 1) -> float | torch.Tensor:
        """The factor on a batch's LM token *sum* in the objective.

        `replicas` batches (data-parallel ranks x accumulated micro-batches) make one global batch,
        and DeepSpeed averages their gradients, i.e. divides by `replicas`: the factor undoes that.
        "sum" needs nothing else; "mean" divides by the global batch's target-token count.
        """
        if self.lm_reduction == "sum":
            return float(replicas)
        return replicas / max(global_tokens, 1)

    def objective(self, lm_sum: float | torch.Tensor, global_tokens: float | torch.Tensor,
                  rec: float | torch.Tensor) -> float | torch.Tensor:
        """The loss of a global batch from its LM token sum, target-token count and mean MSE."""
        return self.lm_weight(global_tokens) * lm_sum + self.alpha * rec

    def forward(self, batch: dict[str, torch.Tensor], replicas: int = 1,
                global_tokens: float | torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (loss, lm_sum, rec) for a batch whose rows carry `group` = task index.

        loss = lm_weight(global_tokens, replicas) * lm_sum + alpha * rec, to back-propagate.
        lm_sum (detached) is the token sum of the LM loss over this batch's target tokens, rec
        (detached) the reconstruction MSE (mean over its rows). A single process leaves `replicas`
        and `global_tokens` at their defaults: `loss` is then the objective of this batch. Data-parallel
        callers pass `replicas = world * accum` and, for "mean", the global batch's target-token count,
        so that DeepSpeed's gradient average gives the gradient of the global batch's objective
        (see ipt_dist.distributed.msf_worker).
        """
        tasks, inverse = torch.unique(batch["group"], return_inverse=True)
        originals = self.task_prompts[tasks]  # (U, L, H)
        # Cast to the AE's dtype: fp32, or bf16/fp16 when DeepSpeed mixed precision casts its weights.
        ae_dtype = self.autoencoder.encoder.weight.dtype
        recon = self.autoencoder(originals.to(ae_dtype))  # (U, L, H): P* = Dec(Enc(P))
        losses, _ = self.backbone.token_losses(recon[inverse], batch)  # (M,) over the M target tokens
        lm_sum = losses.sum()
        # MSE per example as in the reference: each row's P*_i against its P_i.
        rec = F.mse_loss(recon[inverse].float(), originals[inverse].float())
        tokens = losses.numel() if global_tokens is None else global_tokens
        loss = self.lm_weight(tokens, replicas) * lm_sum + self.alpha * rec
        return loss, lm_sum.detach(), rec.detach()


def msf_step(model: MSFModel, optimizer: torch.optim.Optimizer, scheduler, batch, grad_clip: float) -> dict:
    """One single-process MSF step (the distributed path lets DeepSpeed do clip/step).

    Returns tensors: `loss` (the objective as optimised, see MSFModel), `lm_loss` (token-mean LM
    loss, whatever the reduction), `rec_loss`, `target_tokens` and `grad_norm` (before clipping).
    """
    optimizer.zero_grad(set_to_none=True)
    loss, lm_sum, rec = model(batch)
    loss.backward()
    params = [p for p in model.autoencoder.parameters()]
    # max_norm inf: the norm is still computed (a logged metric) and nothing is scaled.
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    optimizer.step()
    scheduler.step()
    tokens = (batch["labels"] != -100).sum()
    return {"loss": loss.detach(), "lm_loss": lm_sum / tokens.clamp(min=1), "rec_loss": rec,
            "target_tokens": tokens, "grad_norm": grad_norm.detach()}


# ------------------------------------------------------------------ evaluation


@dataclass
class EvalItem:
    group: int  # which prompt (job or task) this row uses
    input_ids: list[int]


@torch.no_grad()
def predict(backbone: Backbone, prompts: torch.Tensor, items: list[EvalItem], batch_size: int) -> list[str]:
    """Generate for every item with its group's prompt (prompts: (G, L, H)); batched, length-sorted."""
    was_training = backbone.model.training
    backbone.set_train_mode(False)
    order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
    preds: list[str] = [""] * len(items)
    device = backbone.device
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        batch = backbone.collate_generate([items[i].input_ids for i in idx])
        batch = {k: v.to(device) for k, v in batch.items()}
        groups = torch.tensor([items[i].group for i in idx], device=prompts.device)
        outs = backbone.generate(prompts[groups].to(device), batch)
        for i, o in zip(idx, outs):
            preds[i] = o
    backbone.model.train(was_training)
    return preds


def evaluate_groups(backbone: Backbone, prompts: torch.Tensor, splits: list, metrics: list[str],
                    batch_size: int, max_examples: int | None = None, *, rank: int = 0, world: int = 1,
                    all_gather: Callable[[list], list[list]] | None = None
                    ) -> tuple[list[float], list[list[str]]]:
    """Score group g's prompt on splits[g] (a TokenizedSplit) with metrics[g].

    Sharded (`world` > 1): this rank generates every `world`-th example from `rank` on, and
    `all_gather(local)` (one list per rank, e.g. torch.distributed.all_gather_object) gives it the
    others' predictions, so every rank returns the same scores. Every rank runs the same number of
    generate calls: under ZeRO-3 each forward is a collective, so the shards are padded to equal
    length with a repeat of their first example (its extra prediction is dropped).

    Returns (scores (G,), predictions per group); a group with no examples scores NaN.
    Raises:
        ValueError: `world` > 1 without `all_gather`.
    """
    items, owner = [], []
    for g, split in enumerate(splits):
        n = len(split) if max_examples is None else min(len(split), max_examples)
        items.extend(EvalItem(g, split.inputs[i]) for i in range(n))
        owner.extend([g] * n)
    if world == 1:
        preds = predict(backbone, prompts, items, batch_size)
    else:
        if all_gather is None:
            raise ValueError("evaluate_groups: a sharded evaluation (world > 1) needs all_gather")
        mine = list(range(rank, len(items), world))
        per_rank = math.ceil(len(items) / world)
        padded = mine + [mine[0] if mine else 0] * (per_rank - len(mine))
        local = predict(backbone, prompts, [items[j] for j in padded], batch_size) if padded else []
        by_item = {j: p for shard in all_gather(list(zip(mine, local[:len(mine)], strict=True))) for j, p in shard}
        preds = [by_item[j] for j in range(len(items))]
    per_group: list[list[str]] = [[] for _ in splits]
    for g, p in zip(owner, preds):
        per_group[g].append(p)
    scores = []
    for g, split in enumerate(splits):
        n = len(per_group[g])
        scores.append(compute_metric(metrics[g], per_group[g], split.references[:n]) if n else float("nan"))
    return scores, per_group


# ------------------------------------------------------------------ MSF batches and evaluation


def collate_msf(backbone: Backbone, data: list[TokenizedTask], pairs: list[tuple[int, int]]) -> dict:
    """Rows of a mixed-task batch from (task index, example index) pairs; `group` is the task index
    (which prompt the row uses)."""
    batch = backbone.collate_train([data[t].train.inputs[i] for t, i in pairs],
                                   [data[t].train.targets[i] for t, i in pairs])
    batch["group"] = torch.tensor([t for t, _ in pairs])
    return batch


@torch.no_grad()
def evaluate_reconstructed(backbone: Backbone, ae: PromptAutoencoder, task_prompts: torch.Tensor,
                           data: list[TokenizedTask], split: str, batch_size: int,
                           max_examples: int | None = None) -> list[float]:
    """Settings 1/2: score each task with its reconstructed prompt Dec(Enc(P_i)) (single process;
    the distributed worker gathers the AE first and calls `evaluate_groups` sharded)."""
    recon = ae(task_prompts.to(next(ae.parameters()).device).float())  # (T, L, H)
    scores, _ = evaluate_groups(backbone, recon, [t.split(split) for t in data], [t.info.metric for t in data],
                                batch_size, max_examples)
    return scores
