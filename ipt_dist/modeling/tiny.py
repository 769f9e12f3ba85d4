"""Tiny random backbones and a locally built tokenizer: tests and demos run with no downloads.

Everything here is deterministic (fixed corpus, fixed seeds), so every process that builds
"tiny-t5" gets bit-identical weights. Architecture shapes of real models (bart-base,
t5-large, llama-1b, ...) for benchmarks on machines without weights live here too.
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_KINDS = ("tiny-t5", "tiny-bart", "tiny-llama", "tiny-gpt2")

# Special tokens of the local tokenizer, fixed ids.
PAD, EOS, BOS, UNK = "<pad>", "</s>", "<s>", "<unk>"

# A fixed English corpus for the byte-level BPE merges. Any text still tokenises (byte
# fallback), so the tokenizer works on real data too, only with longer sequences.
_CORPUS = """
the a an of to in and is was for on that with as by it this be are from at or not have
positive negative neutral good bad great terrible happy sad love hate movie film book food
yes no true false even odd one two three four five six seven eight nine ten zero
red blue green yellow black white orange purple colour color animal dog cat bird fish horse
sports football tennis game team player food pizza bread apple rice soup music song band
question answer context task sentence word first last copy reverse label category topic
what who where when why how which is the capital of france paris london berlin
entailment contradiction hypothesis premise sentiment review great movie terrible plot
the quick brown fox jumps over the lazy dog a small house near the river
""" * 4


def build_tiny_tokenizer(vocab_size: int = 600):
    """A byte-level BPE tokenizer trained on a fixed corpus (deterministic, < 1 s)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS, BOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.split("\n"), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, bos_token=BOS, unk_token=UNK
    )


def tiny_config(kind: str, vocab_size: int, hidden: int = 64):
    """Config of a 2-layer model with hidden size `hidden` (tests use 32-64)."""
    from transformers import BartConfig, GPT2Config, LlamaConfig, T5Config

    ids = {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}
    if kind == "tiny-t5":
        return T5Config(
            vocab_size=vocab_size, d_model=hidden, d_kv=hidden // 4, d_ff=2 * hidden, num_layers=2,
            num_decoder_layers=2, num_heads=4, decoder_start_token_id=0, **ids,
        )
    if kind == "tiny-bart":
        return BartConfig(
            vocab_size=vocab_size, d_model=hidden, encoder_layers=2, decoder_layers=2,
            encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=2 * hidden,
            decoder_ffn_dim=2 * hidden, max_position_embeddings=512, decoder_start_token_id=1,
            forced_eos_token_id=None, **ids,
        )
    if kind == "tiny-llama":
        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
            tie_word_embeddings=True, **ids,
        )
    if kind == "tiny-gpt2":
        return GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=2, n_head=4, n_positions=1024, **ids)
    raise ValueError(f"unknown tiny backbone {kind!r}; choose one of {TINY_KINDS}")


def build_tiny_model(kind: str, hidden: int = 64, seed: int = 0):
    """(model, tokenizer) for a tiny random backbone; identical in every process."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    tokenizer = build_tiny_tokenizer()
    config = tiny_config(kind, len(tokenizer), hidden)
    with torch.random.fork_rng():  # leave the caller's RNG stream untouched
        torch.manual_seed(seed)
        cls = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        model = cls.from_config(config)
    return model, tokenizer


def save_tiny_backbone(kind: str, path, hidden: int = 64, seed: int = 0) -> str:
    """Materialise a tiny backbone as an ordinary HF checkpoint directory; returns the path."""
    model, tokenizer = build_tiny_model(kind, hidden, seed)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return str(path)


# Architecture shapes of real models, random-initialised for benchmarks (no weights needed).
ARCH_CONFIGS: dict[str, tuple[str, dict]] = {
    "bart-base": ("bart", {"d_model": 768, "encoder_layers": 6, "decoder_layers": 6,
                           "encoder_attention_heads": 12, "decoder_attention_heads": 12,
                           "encoder_ffn_dim": 3072, "decoder_ffn_dim": 3072,
                           "vocab_size": 50265, "max_position_embeddings": 1024}),
    "bart-large": ("bart", {"d_model": 1024, "encoder_layers": 12, "decoder_layers": 12,
                            "encoder_attention_heads": 16, "decoder_attention_heads": 16,
                            "encoder_ffn_dim": 4096, "decoder_ffn_dim": 4096,
                            "vocab_size": 50265, "max_position_embeddings": 1024}),
    "t5-base": ("t5", {"d_model": 768, "d_kv": 64, "d_ff": 3072, "num_layers": 12, "num_heads": 12,
                       "vocab_size": 32128}),
    "t5-large": ("t5", {"d_model": 1024, "d_kv": 64, "d_ff": 4096, "num_layers": 24, "num_heads": 16,
                        "vocab_size": 32128}),
    "smollm2-135m": ("llama", {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                               "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
                               "tie_word_embeddings": True, "max_position_embeddings": 8192}),
    "llama-1b": ("llama", {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
                           "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
                           "tie_word_embeddings": True, "max_position_embeddings": 8192}),
    "llama-3b": ("llama", {"hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28,
                           "num_attention_heads": 24, "num_key_value_heads": 8, "vocab_size": 128256,
                           "tie_word_embeddings": True, "max_position_embeddings": 8192}),
}


def arch_config(arch: str):
    """A transformers config of a named architecture shape, with the tiny tokenizer's special ids."""
    from transformers import BartConfig, LlamaConfig, T5Config

    if arch not in ARCH_CONFIGS:
        raise ValueError(f"backbone.arch: unknown architecture {arch!r}; choose one of {sorted(ARCH_CONFIGS)}")
    family, kw = ARCH_CONFIGS[arch]
    ids = {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}
    if family == "bart":
        return BartConfig(decoder_start_token_id=1, forced_eos_token_id=None, **ids, **kw)
    if family == "t5":
        return T5Config(decoder_start_token_id=0, **ids, **kw)
    return LlamaConfig(**ids, **kw)


# ---------------------------------------------------------------------------------------
# A tiny backbone that already "knows" the demo tasks, so prompt tuning has something to
# elicit (as with a real pretrained LM). It is trained on a separate draw of the demo tasks
# (seed 12345) where each input starts with a short instruction ("topic: ..."); at prompt
# tuning time the instruction is absent and the soft prompt has to take its place.

DEMO_KINDS = {"demo-t5": "tiny-t5", "demo-llama": "tiny-llama"}
_DEMO_VERSION = "v1"


def _demo_cache_dir(kind: str, cache_dir: str | None) -> Path:
    from ipt_dist.paths import cache_root

    return cache_root(cache_dir) / f"{kind}-{_DEMO_VERSION}"


def pretrain_demo_backbone(kind: str, out_dir, steps: int = 500, hidden: int = 64, seed: int = 0) -> str:
    """Train a tiny model (all weights) on instruction-prefixed demo tasks; save to `out_dir`."""
    import tempfile

    from ipt_dist.data.demo import write_demo_tasks
    from ipt_dist.data.local import load_tasks

    base = DEMO_KINDS[kind]
    model, tok = build_tiny_model(base, hidden, seed)
    with tempfile.TemporaryDirectory() as tmp:
        names = write_demo_tasks(tmp, n_train=300, n_dev=8, n_test=8, seed=12345)
        tasks = load_tasks(tmp, names)
    pairs = [(n.replace("demo_", "").replace("_", " ") + ": " + ex.input, ex.target)
             for n in names for ex in tasks[n].train]
    # tokenise once; the loop only indexes
    if model.config.is_encoder_decoder:
        xs = tok([p[0] for p in pairs], add_special_tokens=True)["input_ids"]
        ys = [t + [tok.eos_token_id] for t in tok([p[1] for p in pairs], add_special_tokens=False)["input_ids"]]
    else:
        xs = tok([p[0] for p in pairs], add_special_tokens=True)["input_ids"]
        ys = [t + [tok.eos_token_id] for t in tok([" " + p[1] for p in pairs], add_special_tokens=False)["input_ids"]]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(pairs), (64,), generator=g).tolist()
        if model.config.is_encoder_decoder:
            S, T = max(len(xs[i]) for i in idx), max(len(ys[i]) for i in idx)
            ids = torch.tensor([xs[i] + [0] * (S - len(xs[i])) for i in idx])
            lab = torch.tensor([ys[i] + [-100] * (T - len(ys[i])) for i in idx])
            loss = model(input_ids=ids, attention_mask=(ids != 0).long(), labels=lab).loss
        else:
            seqs = [xs[i] + ys[i] for i in idx]
            N = max(len(s) for s in seqs)
            ids = torch.tensor([s + [0] * (N - len(s)) for s in seqs])
            lab = torch.tensor([[-100] * len(xs[i]) + ys[i] + [-100] * (N - len(xs[i]) - len(ys[i])) for i in idx])
            loss = model(input_ids=ids, attention_mask=(lab != -100).long() | (ids != 0).long(), labels=lab).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    return str(out_dir)


def demo_backbone_path(kind: str, cache_dir: str | None = None) -> str:
    """Path of the cached pre-trained demo backbone, training it on first use (~30-60 s on CPU)."""
    from ipt_dist.paths import build_once

    return str(build_once(_demo_cache_dir(kind, cache_dir), lambda tmp: pretrain_demo_backbone(kind, tmp),
                          f"pre-training the {kind} demo backbone"))
