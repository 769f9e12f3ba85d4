"""Model FLOPs of a prompt-tuning step on a frozen backbone, and the device's measured matmul peak.

    python bench/flops.py --arch llama-1b --batch 8 --input-len 256 --target-len 32 --prompt-len 100

(prints the per-step count of that shape with this formula and with the old MSF bench formula).
The one FLOP count both throughput benches (`ist_throughput.py`, `msf_throughput.py`) use:

  * linear:    4 x (non-embedding parameters) x (tokens each of them sees). Forward 2 FLOPs per
               weight per token, backward 2 more for the input gradient (the backbone is frozen:
               no weight gradient). Non-embedding = every parameter outside nn.Embedding modules
               (token, position and T5 relative-bias tables are lookups: no FLOPs) and outside the
               LM head. Decoder-only: the body sees prompt + input + target tokens. Encoder-decoder:
               the encoder sees prompt + input tokens, the decoder target tokens, except the
               cross-attention K/V projections, which run on the encoder's tokens.
  * lm_head:   4 x (H x V) x target tokens (the logits the loss needs, tied or not).
  * attention: the two activation x activation products per layer (QK^T and AV), forward
               4 x pairs x d_attn, backward 2x forward (gradients of both operands), so 12 x
               pairs x d_attn per layer, with pairs = S(S+1)/2 per row for causal self-attention,
               S^2 for bidirectional and S_dec x S_enc for cross-attention.

Tokens are counted per row without padding (padding is computed but is no useful work: the
benches report its share separately). Embedding lookups, norms' arithmetic, softmax and the loss
are not counted (a few % at most).
"""

from __future__ import annotations

import time

import torch
from torch import nn


def _numel(p: torch.Tensor) -> int:
    return int(getattr(p, "ds_numel", 0) or p.numel())  # DeepSpeed ZeRO-3 keeps the full size here


def _cross_kv(module: nn.Module) -> list[nn.Module]:
    """The K and V projections of the cross-attention blocks inside a decoder (T5, BART-style)."""
    out = []
    for name, m in module.named_modules():
        last = name.rsplit(".", 1)[-1]
        parent = name.rsplit(".", 2)[-2] if name.count(".") >= 1 else ""
        if parent in ("EncDecAttention", "encoder_attn", "crossattention") and last in ("k", "v", "k_proj", "v_proj"):
            out.append(m)
    return out


def param_counts(model: nn.Module) -> dict[str, int]:
    """Parameters by what they cost: `body` (decoder-only) or `encoder` / `decoder` / `cross_kv`
    (encoder-decoder; `decoder` without the cross K/V), `lm_head` (H x V, counted even when tied)
    and `embedding` (lookup tables: no FLOPs)."""
    emb = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)}
    head = model.get_output_embeddings()
    head_ids = {id(p) for p in head.parameters()}

    def body(m: nn.Module, skip: set[int] = frozenset()) -> int:
        seen, n = set(), 0
        for p in m.parameters():
            if id(p) in emb or id(p) in head_ids or id(p) in skip or id(p) in seen:
                continue
            seen.add(id(p))
            n += _numel(p)
        return n

    counts = {"lm_head": sum(_numel(p) for p in head.parameters()),
              "embedding": sum(_numel(p) for m in model.modules() if isinstance(m, nn.Embedding)
                               for p in m.parameters(recurse=False) if id(p) not in head_ids)}
    if getattr(model.config, "is_encoder_decoder", False):
        kv = {id(p) for m in _cross_kv(model.get_decoder()) for p in m.parameters()}
        if not kv:
            raise ValueError(f"{type(model).__name__}: no cross-attention K/V projections found; "
                             "bench/flops.py needs to learn this architecture's module names")
        counts.update(encoder=body(model.get_encoder()), decoder=body(model.get_decoder(), kv),
                      cross_kv=sum(_numel(p) for m in _cross_kv(model.get_decoder()) for p in m.parameters()))
    else:
        counts["body"] = body(getattr(model, model.base_model_prefix))
    return counts


def attention_shape(config) -> tuple[int, int, int]:
    """(encoder or decoder-only layers, decoder layers (0 for decoder-only), d_attn = heads x head dim)."""
    c = config
    if getattr(c, "is_encoder_decoder", False):
        if c.model_type in ("t5", "mt5", "umt5"):
            return c.num_layers, c.num_decoder_layers or c.num_layers, c.num_heads * c.d_kv
        if hasattr(c, "encoder_layers"):  # BART family
            return c.encoder_layers, c.decoder_layers, c.d_model
    else:
        layers = getattr(c, "num_hidden_layers", None) or getattr(c, "n_layer", None)
        heads = getattr(c, "num_attention_heads", None) or getattr(c, "n_head", None)
        hidden = getattr(c, "hidden_size", None) or getattr(c, "n_embd", None)
        head_dim = getattr(c, "head_dim", None) or (hidden // heads if heads else None)
        if layers and heads and head_dim:
            return layers, 0, heads * head_dim
    raise ValueError(f"bench/flops.py: no attention shape for model_type {c.model_type!r}; add it here")


def row_lengths(batch: dict[str, torch.Tensor], prompt_len: int, encoder_decoder: bool) -> dict[str, torch.Tensor]:
    """Per-row unpadded lengths of a `Backbone.collate_train` batch with an L-token prompt:
    `enc` (encoder or decoder-only sequence: prompt + input [+ target]), `dec` (decoder tokens,
    encoder-decoders) and `tgt` (target tokens, i.e. LM-head positions)."""
    mask = batch["attention_mask"].long().sum(1).cpu() + prompt_len
    tgt = (batch["labels"] != -100).long().sum(1).cpu()
    return {"enc": mask, "dec": tgt if encoder_decoder else torch.zeros_like(tgt), "tgt": tgt}


def padded_tokens(batch: dict[str, torch.Tensor], prompt_len: int, encoder_decoder: bool) -> int:
    """Token positions the backbone computes for a collated batch, padding included (the
    decoder's target positions too for encoder-decoders)."""
    B, S = batch["attention_mask"].shape
    return B * (prompt_len + S) + (B * batch["labels"].shape[1] if encoder_decoder else 0)


def prompt_net_flops(n_params: int, vectors: int, trainable: bool) -> float:
    """FLOPs of the prompt autoencoder (MSF, trainable: 6 per weight per prompt vector) or of the
    frozen IST decoder Dec(z) (4: forward + input gradient), run once per job or task per step."""
    return (6.0 if trainable else 4.0) * n_params * vectors


def step_flops(model: nn.Module, lengths: dict[str, torch.Tensor], counts: dict[str, int] | None = None
               ) -> dict[str, float]:
    """FLOPs of one training step (forward + input-gradient backward) over rows of `lengths`
    (`row_lengths`) on a frozen `model`; returns linear, lm_head, attention and total."""
    counts = counts or param_counts(model)
    enc, dec, tgt = (lengths[k].double() for k in ("enc", "dec", "tgt"))
    n_enc_layers, n_dec_layers, d_attn = attention_shape(model.config)
    if getattr(model.config, "is_encoder_decoder", False):
        linear = 4.0 * ((counts["encoder"] + counts["cross_kv"]) * enc.sum() + counts["decoder"] * dec.sum())
        pairs_per_layer = (n_enc_layers * enc * enc  # bidirectional encoder
                           + n_dec_layers * (dec * (dec + 1) / 2 + dec * enc))  # causal self + cross
    else:
        linear = 4.0 * counts["body"] * enc.sum()
        pairs_per_layer = n_enc_layers * enc * (enc + 1) / 2
    attention = 12.0 * d_attn * pairs_per_layer.sum()
    head = 4.0 * counts["lm_head"] * tgt.sum()
    out = {"linear": float(linear), "lm_head": float(head), "attention": float(attention)}
    out["total"] = sum(out.values())
    return out


def old_msf_flops(model: nn.Module, lengths: dict[str, torch.Tensor]) -> float:
    """The MSF bench's formula before 2026-12-02: 4 x all parameters (tied embedding included)
    x (prompt + attention-mask tokens), kept to say how much the count changed."""
    n = sum(_numel(p) for p in model.parameters())  # a tied embedding counts once, as before
    return 4.0 * n * float(lengths["enc"].sum())


# ---------------------------------------------------------------------------- the measured peak


def matmul_peak(dtype: torch.dtype, device: torch.device, mlp_shape: tuple[int, int, int] | None = None,
                min_seconds: float = 0.2, max_seconds_per_shape: float = 3.0,
                squares: tuple[int, ...] | None = None) -> dict:
    """Best measured GFLOP/s of dense matmuls of `dtype` on `device`: a few square sizes and, when
    given, an MLP-shaped (m, k) @ (k, n) product. Larger shapes are skipped once one product takes
    longer than `max_seconds_per_shape` (bf16 emulated on a CPU without AVX512-bf16 is that slow).
    Returns {"gflops": best, "shapes": [{"m", "k", "n", "gflops"}], "dtype", "threads"}."""
    gpu = device.type == "cuda"
    squares = squares or ((2048, 4096, 8192) if gpu else (512, 1024, 2048))
    shapes = [(n, n, n) for n in squares] + ([tuple(mlp_shape)] if mlp_shape else [])
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    rows, too_slow = [], False
    for m, k, n in sorted(shapes, key=lambda s: s[0] * s[1] * s[2]):
        if too_slow:
            break
        a = torch.randn(m, k, device=device).to(dtype)
        b = torch.randn(k, n, device=device).to(dtype)
        a @ b  # warm-up (kernel selection, first-touch)
        sync()
        reps, best, spent = 0, float("inf"), 0.0
        while spent < min_seconds or reps < 3:
            t0 = time.perf_counter()
            a @ b
            sync()
            dt = time.perf_counter() - t0
            best, spent, reps = min(best, dt), spent + dt, reps + 1
            if dt > max_seconds_per_shape:
                too_slow = True
                break
        rows.append({"m": m, "k": k, "n": n, "gflops": 2 * m * k * n / best / 1e9})
        del a, b
    return {"gflops": max(r["gflops"] for r in rows), "shapes": rows, "dtype": str(dtype).replace("torch.", ""),
            "threads": torch.get_num_threads() if not gpu else None}


def dtype_note(dtype: str, device: torch.device) -> str | None:
    """A warning to print with every figure of a bf16 run on a CPU without fast bf16 (AVX512-bf16 or
    AMX): such a CPU emulates bf16 and runs it far slower than fp32. None otherwise."""
    from ipt_dist.modeling.backbone import resolve_dtype

    if dtype == "bfloat16" and device.type == "cpu" and resolve_dtype("auto", "cpu")[0] != "bfloat16":
        return "bf16 EMULATED: this CPU has no AVX512-bf16 / AMX (bf16 runs far slower than fp32 here)"
    return None


def mlp_shape(config, rows: int = 2048) -> tuple[int, int, int] | None:
    """(rows, H, FFN) of the backbone's MLP up-projection, the product most of its FLOPs are in."""
    c = config
    hidden = getattr(c, "d_model", None) or getattr(c, "hidden_size", None) or getattr(c, "n_embd", None)
    ffn = (getattr(c, "d_ff", None) or getattr(c, "intermediate_size", None) or getattr(c, "encoder_ffn_dim", None)
           or getattr(c, "n_inner", None) or (4 * hidden if hidden else None))
    return (rows, int(hidden), int(ffn)) if hidden and ffn else None


def main() -> None:
    import argparse
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from ipt_dist.modeling import tiny

    p = argparse.ArgumentParser(description="FLOPs of one prompt-tuning step: this formula vs the old MSF one")
    p.add_argument("--arch", default="llama-1b", help=f"one of {sorted(tiny.ARCH_CONFIGS)}")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument("--target-len", type=int, default=32)
    p.add_argument("--prompt-len", type=int, default=100)
    a = p.parse_args()
    config = tiny.arch_config(a.arch)
    cls = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    with torch.device("meta"):
        model = cls.from_config(config)
    B, S, T = a.batch, a.input_len, a.target_len
    dec_only = not config.is_encoder_decoder
    batch = {"attention_mask": torch.ones(B, S + T if dec_only else S, dtype=torch.long),
             "labels": torch.ones(B, S + T if dec_only else T, dtype=torch.long)}
    if dec_only:
        batch["labels"][:, :S] = -100
    lengths = row_lengths(batch, a.prompt_len, config.is_encoder_decoder)
    new, old = step_flops(model, lengths), old_msf_flops(model, lengths)
    print(f"{a.arch}: params {param_counts(model)}")
    print(f"per step (batch {B}, input {S}, target {T}, prompt {a.prompt_len}): "
          + ", ".join(f"{k} {v / 1e12:.3f} TFLOP" for k, v in new.items())
          + f"; old formula {old / 1e12:.3f} TFLOP; old / new = {old / new['total']:.3f}")


if __name__ == "__main__":
    main()
