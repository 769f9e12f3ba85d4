"""The prompt autoencoder of MSF: Dec(Enc(P)) reconstructs a whole flattened prompt."""

from __future__ import annotations

import torch
from torch import nn

from ipt_dist.config import IPTConfig


class PromptDecoder(nn.Module):
    """Dec: Linear(d -> H_mid) -> tanh -> Linear(H_mid -> L*H), reshaped to (L, H)."""

    def __init__(self, d: int, prompt_len: int, hidden: int, mid_dim: int = 768) -> None:
        super().__init__()
        self.d, self.prompt_len, self.hidden = d, prompt_len, hidden
        self.net = nn.Sequential(nn.Linear(d, mid_dim), nn.Tanh(), nn.Linear(mid_dim, prompt_len * hidden))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(z.shape[0], self.prompt_len, self.hidden)  # (N, d) -> (N, L, H)


class PromptAutoencoder(nn.Module):
    """Reference architecture: Enc = Linear(L*H -> d) (no activation), Dec as above."""

    def __init__(self, d: int, prompt_len: int, hidden: int, mid_dim: int = 768) -> None:
        super().__init__()
        if d <= 0:
            raise ValueError(f"msf.d: the intrinsic dimension must be > 0, got {d}")
        if d > prompt_len * hidden:
            raise ValueError(
                f"msf.d: the intrinsic dimension ({d}) must not exceed the prompt size L*H = "
                f"{prompt_len}*{hidden} = {prompt_len * hidden}; choose a smaller d"
            )
        self.d, self.prompt_len, self.hidden, self.mid_dim = d, prompt_len, hidden, mid_dim
        self.encoder = nn.Linear(prompt_len * hidden, d)
        self.decoder = PromptDecoder(d, prompt_len, hidden, mid_dim)

    def encode(self, prompts: torch.Tensor) -> torch.Tensor:
        return self.encoder(prompts.reshape(prompts.shape[0], -1))  # (N, L, H) -> (N, L*H) -> (N, d)

    def forward(self, prompts: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encode(prompts))  # (N, L, H)

    def shape_dict(self) -> dict[str, int]:
        return {"d": self.d, "prompt_len": self.prompt_len, "hidden": self.hidden, "mid_dim": self.mid_dim}


@torch.no_grad()
def code_centroid(encode, prompts: torch.Tensor) -> torch.Tensor:
    """The mean code of `prompts` (T, L, H) under `encode` ((N, L, H) -> (N, d)), fp32 on the CPU:
    where IST's z starts with `ist.z_init: centroid` (MSF: mean Enc(P_i) of its training prompts)."""
    return encode(prompts.float()).mean(0).float().cpu()


def random_decoder(d: int, prompt_len: int, hidden: int, mid_dim: int = 768, seed: int = 0) -> PromptDecoder:
    """The no-MSF baseline: a decoder with PyTorch's default random initialisation."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return PromptDecoder(d, prompt_len, hidden, mid_dim)


def build_autoencoder(cfg: IPTConfig, hidden: int) -> PromptAutoencoder:
    """The MSF autoencoder of `cfg`, initialised from `msf.seed` alone (the same weights in the
    single-process driver and on every distributed worker, whatever the global RNG holds)."""
    with torch.random.fork_rng():
        torch.manual_seed(cfg.msf.seed)
        return PromptAutoencoder(cfg.msf.d, cfg.pt.prompt_len, hidden, cfg.msf.mid_dim)
