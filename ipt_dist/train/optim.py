"""Optimisation pieces shared by every stage.

`BatchedAdamW` trains K independent jobs stacked in one tensor (K, ...): each row has its
own learning rate, schedule and gradient clipping, and Adam's moments are element-wise,
so row k evolves exactly as if job k were trained alone with torch.optim.AdamW and
clip_grad_norm_. That is what makes packed PT/IST equal to K separate runs.
"""

from __future__ import annotations

import math

import torch


def linear_warmup_decay(step: int, total_steps: int, warmup_steps: int) -> float:
    """LR multiplier of update `step` (0-based): linear warmup, then linear decay to 0.

    Same values as transformers' get_linear_schedule_with_warmup.
    """
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def warmup_steps_for(total_steps: int, warmup_ratio: float) -> int:
    return math.ceil(total_steps * warmup_ratio) if warmup_ratio > 0 else 0


def clip_rows_(grad: torch.Tensor, max_norm: torch.Tensor) -> torch.Tensor:
    """Clip each row's gradient to its own max norm in place (0 = no clipping); returns norms (K,)."""
    norms = grad.flatten(1).norm(dim=1)  # (K,)
    coef = torch.where(max_norm > 0, (max_norm / (norms + 1e-6)).clamp(max=1.0), torch.ones_like(norms))
    grad.mul_(coef.view(-1, *([1] * (grad.dim() - 1))))
    return norms


class BatchedAdamW:
    """AdamW over a (K, ...) parameter with per-row learning rates and clipping."""

    def __init__(self, param: torch.Tensor, lrs, grad_clips, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0) -> None:
        self.param = param
        self.lrs = torch.as_tensor(lrs, dtype=torch.float32, device=param.device)  # (K,)
        self.grad_clips = torch.as_tensor(grad_clips, dtype=torch.float32, device=param.device)  # (K,)
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay
        self.exp_avg = torch.zeros_like(param)
        self.exp_avg_sq = torch.zeros_like(param)
        self.t = 0

    @torch.no_grad()
    def step(self, lr_mult: float = 1.0) -> torch.Tensor:
        """One update with the current .grad; returns per-row gradient norms before clipping."""
        p, g = self.param, self.param.grad
        norms = clip_rows_(g, self.grad_clips)
        self.t += 1
        b1, b2 = self.betas
        shape = (-1,) + (1,) * (p.dim() - 1)
        lr = (self.lrs * lr_mult).view(shape)
        if self.weight_decay:
            p.mul_(1 - lr * self.weight_decay)
        self.exp_avg.lerp_(g, 1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(g, g, value=1 - b2)
        bc1, bc2 = 1 - b1**self.t, 1 - b2**self.t
        denom = (self.exp_avg_sq.sqrt() / math.sqrt(bc2)).add_(self.eps)
        p.sub_((lr / bc1) * self.exp_avg / denom)
        return norms

    def zero_grad(self) -> None:
        self.param.grad = None

    def state_dict(self) -> dict:
        return {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq, "t": self.t, "lrs": self.lrs,
                "grad_clips": self.grad_clips}

    def load_state_dict(self, state: dict) -> None:
        self.exp_avg.copy_(state["exp_avg"])
        self.exp_avg_sq.copy_(state["exp_avg_sq"])
        self.t = int(state["t"])
        self.lrs, self.grad_clips = state["lrs"], state["grad_clips"]
