"""bench/flops.py: the model-FLOP count of the throughput benches, checked against hand counts."""


import pytest
import torch

from tests.bench import bench_module


@pytest.fixture(scope="module")
def flops():
    return bench_module("flops")


def _batch(in_lens, tgt_lens, decoder_only):
    """A collate_train-shaped batch (right-padded) with the given unpadded lengths."""
    B = len(in_lens)
    if decoder_only:
        N = max(i + t for i, t in zip(in_lens, tgt_lens))
        mask, labels = torch.zeros(B, N, dtype=torch.long), torch.full((B, N), -100)
        for r, (i, t) in enumerate(zip(in_lens, tgt_lens)):
            mask[r, : i + t] = 1
            labels[r, i : i + t] = 7
    else:
        mask, labels = torch.zeros(B, max(in_lens), dtype=torch.long), torch.full((B, max(tgt_lens)), -100)
        for r, (i, t) in enumerate(zip(in_lens, tgt_lens)):
            mask[r, :i] = 1
            labels[r, :t] = 7
    return {"attention_mask": mask, "labels": labels}


def test_decoder_only_count_matches_a_hand_count_without_the_embedding(flops):
    from ipt_dist.modeling.tiny import build_tiny_model

    model, _ = build_tiny_model("tiny-llama")
    c = model.config  # hidden 64, MLP 128, 2 layers, 4 heads of 16, 2 KV heads, tied embedding
    H, F, nl, V = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size
    kv = c.num_key_value_heads * (H // c.num_attention_heads)
    per_layer = H * H + 2 * H * kv + H * H + 3 * H * F + 2 * H  # q, k, v, o, gate/up/down, two RMSNorms
    body = nl * per_layer + H  # + final norm; the (tied) embedding is a lookup: not here
    counts = flops.param_counts(model)
    assert counts["body"] == body and counts["lm_head"] == V * H
    assert body + V * H == sum(p.numel() for p in model.parameters())  # nothing left out, nothing twice

    L, ins, tgts = 4, [5, 9], [3, 2]
    lengths = flops.row_lengths(_batch(ins, tgts, decoder_only=True), L, encoder_decoder=False)
    S = [L + i + t for i, t in zip(ins, tgts)]  # the body sees prompt + input + target
    hand_linear = 4 * body * sum(S)
    hand_head = 4 * V * H * sum(tgts)
    hand_attn = 12 * H * nl * sum(s * (s + 1) // 2 for s in S)  # causal pairs, d_attn = heads x 16 = H
    got = flops.step_flops(model, lengths)
    assert got == {"linear": hand_linear, "lm_head": hand_head, "attention": hand_attn,
                   "total": hand_linear + hand_head + hand_attn}
    # The old MSF formula counted the tied embedding as 4N per token on every token.
    assert flops.old_msf_flops(model, lengths) == 4 * (body + V * H) * sum(S)


def test_encoder_decoder_count_splits_encoder_and_decoder_tokens(flops):
    from ipt_dist.modeling.tiny import build_tiny_model

    model, _ = build_tiny_model("tiny-t5")
    c = model.config  # d_model 64, 4 heads of 16, d_ff 128, 2 + 2 layers
    d, inner, ff, V = c.d_model, c.num_heads * c.d_kv, c.d_ff, c.vocab_size
    attn = 4 * d * inner  # q, k, v, o
    enc = c.num_layers * (attn + 2 * d * ff + 2 * d) + d  # + 2 norms per block, final norm
    cross_kv = c.num_decoder_layers * 2 * d * inner  # run on the encoder's tokens
    dec = c.num_decoder_layers * (attn + (attn - 2 * d * inner) + 2 * d * ff + 3 * d) + d
    counts = flops.param_counts(model)
    assert (counts["encoder"], counts["decoder"], counts["cross_kv"], counts["lm_head"]) == (enc, dec, cross_kv, V * d)

    L, ins, tgts = 3, [6, 4], [2, 5]
    lengths = flops.row_lengths(_batch(ins, tgts, decoder_only=False), L, encoder_decoder=True)
    E = [L + i for i in ins]  # encoder: prompt + input; decoder: target tokens
    got = flops.step_flops(model, lengths)
    assert got["linear"] == 4 * ((enc + cross_kv) * sum(E) + dec * sum(tgts))
    assert got["lm_head"] == 4 * V * d * sum(tgts)
    pairs = sum(c.num_layers * e * e + c.num_decoder_layers * (t * (t + 1) // 2 + t * e) for e, t in zip(E, tgts))
    assert got["attention"] == 12 * inner * pairs
    assert flops.padded_tokens(_batch(ins, tgts, decoder_only=False), L, True) == 2 * (L + 6) + 2 * 5


def test_matmul_peak_measures_the_asked_dtype(flops):
    peak = flops.matmul_peak(torch.float32, torch.device("cpu"), (64, 32, 48), min_seconds=0.01, squares=(32,))
    assert peak["dtype"] == "float32" and peak["gflops"] == max(s["gflops"] for s in peak["shapes"]) > 0
    assert (64, 32, 48) in [(s["m"], s["k"], s["n"]) for s in peak["shapes"]]
