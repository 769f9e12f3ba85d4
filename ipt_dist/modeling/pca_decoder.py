"""The PCA-subspace baseline of IST: a frozen affine decoder spanned by the stage-0 prompts.

    dec = pca_decoder(prompts, d)  # prompts (T, L, H): P_i of the MSF training tasks
    dec(z)                         # (N, d) -> (N, L, H) = mean(P) + (z * sigma) @ V_d
    dec.encode(prompts)            # (N, L, H) -> (N, d): the code of a prompt (its projection)

Not in the paper: it asks whether MSF's non-linear, LM-aware subspace beats the plain linear
subspace of the same prompts at the same d (the paper's only baseline is a random decoder).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PCADecoder(nn.Module):
    """Dec(z) = mean(P) + sum_k z_k * sigma_k * v_k, reshaped to (L, H); no trainable parameters.

    `v_k` (rows of `components`, (d, L*H)) are the top principal directions of the flattened
    training prompts, `sigma_k` (`scale`, (d,)) the prompts' standard deviation along each.

    Scaling: the columns are whitened (scaled by sigma_k), so z is in units of the prompts' own
    spread. IST's init z ~ N(0, 0.02) then starts at the mean prompt plus 2% of a standard
    deviation, and a training task's code `encode(P_i)` has unit sample variance per component:
    O(1), the range the MSF decoder's tanh layer works in, so one IST lr grid serves both.
    Orthonormal columns would put z in raw prompt units, where a training prompt's code is of the
    order of ||P_i - mean||; Adam moves each coordinate by about lr per step whatever the gradient's
    scale, so at IST learning rates z would never get there.

    With d > rank (rank <= T - 1 for T centred prompts) the extra components are zero: those
    entries of z change nothing (zero gradient, Adam leaves them at their init), the decoder spans
    exactly the affine hull of the prompts, and z still holds exactly d trainable entries.
    Completing the basis with further (arbitrary) orthonormal directions would mix a
    random-subspace baseline into this one.
    """

    def __init__(self, mean: torch.Tensor, components: torch.Tensor, scale: torch.Tensor, prompt_len: int,
                 hidden: int) -> None:
        super().__init__()
        D = prompt_len * hidden
        d = components.shape[0]
        if tuple(mean.shape) != (D,) or tuple(components.shape) != (d, D) or tuple(scale.shape) != (d,):
            raise ValueError(f"PCA decoder: shapes mean {tuple(mean.shape)}, components {tuple(components.shape)}, "
                             f"scale {tuple(scale.shape)} do not fit L*H = {prompt_len}*{hidden} = {D}")
        self.d, self.prompt_len, self.hidden = d, prompt_len, hidden
        self.register_buffer("mean", mean.float().contiguous())  # (D,)
        self.register_buffer("components", components.float().contiguous())  # (d, D), orthonormal or zero rows
        self.register_buffer("scale", scale.float().contiguous())  # (d,), 0 for the rows beyond the rank

    @property
    def rank(self) -> int:
        """Number of non-zero directions (min(d, rank of the centred prompts))."""
        return int((self.scale > 0).sum())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        flat = self.mean + (z * self.scale) @ self.components  # (N, d) -> (N, D)
        return flat.view(z.shape[0], self.prompt_len, self.hidden)  # (N, L, H)

    def encode(self, prompts: torch.Tensor) -> torch.Tensor:
        """The code z of each prompt: its whitened projection on the directions; (N, L, H) -> (N, d).

        `self(self.encode(P))` is the orthogonal projection of P on the decoder's affine subspace.
        """
        flat = prompts.reshape(prompts.shape[0], -1).to(self.mean) - self.mean  # (N, D)
        proj = flat @ self.components.T  # (N, d)
        safe = torch.where(self.scale > 0, self.scale, torch.ones_like(self.scale))
        return torch.where(self.scale > 0, proj / safe, torch.zeros_like(proj))


def pca_decoder(prompts: torch.Tensor, d: int) -> PCADecoder:
    """The PCA decoder of d dimensions from the stage-0 prompts (T, L, H) of the training tasks.

    Deterministic: the SVD runs in float64 on CPU, and each direction's sign is fixed so that its
    largest-magnitude entry is positive. Directions whose singular value is below numerical rank
    tolerance (as numpy's matrix_rank) count as beyond the rank and are zero.

    Raises:
        ValueError: prompts not (T, L, H), T = 0, or d outside 1..L*H.
    """
    if prompts.dim() != 3 or prompts.shape[0] == 0:
        raise ValueError(f"pca_decoder needs stage-0 prompts of shape (T, L, H) with T >= 1, got "
                         f"{tuple(prompts.shape)}")
    T, L, H = prompts.shape
    D = L * H
    if not 0 < d <= D:
        raise ValueError(f"pca_decoder: d must be in 1..L*H = {D}, got {d}")
    X = prompts.detach().reshape(T, D).to("cpu", torch.float64)  # (T, D)
    mean = X.mean(0)
    _, S, Vh = torch.linalg.svd(X - mean, full_matrices=False)  # S (r0,), Vh (r0, D), r0 = min(T, D)
    tol = (S[0] if S.numel() else 0.0) * max(T, D) * torch.finfo(torch.float64).eps
    rank = int((S > tol).sum())
    k = min(d, rank)
    V = Vh[:k]
    pivot = V.abs().argmax(dim=1, keepdim=True)  # (k, 1)
    V = V * torch.sign(V.gather(1, pivot))  # sign convention: largest-magnitude entry positive
    components = torch.zeros(d, D, dtype=torch.float64)
    components[:k] = V
    scale = torch.zeros(d, dtype=torch.float64)
    scale[:k] = S[:k] / math.sqrt(max(T - 1, 1))  # sample std of the prompts along each direction
    return PCADecoder(mean, components, scale, L, H)
