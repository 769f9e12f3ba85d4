"""Frozen backbones with a soft prompt injected through ``inputs_embeds``.

Encoder-decoders (BART, T5) get the prompt on the encoder side only; decoder-only LMs
(GPT-2, LLaMA/Qwen/SmolLM2 family) get it as a prefix whose positions carry no loss.
Every batch row may carry its *own* prompt (``prompts`` is (B, L, H)), which is what lets
one backbone pass train many jobs at once (packed PT/IST) or many tasks (MSF).

Plain PyTorch + transformers: no ray, mlflow or deepspeed imports here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ipt_dist.config import BackboneConfig
from ipt_dist.errors import UserError, first_line

log = logging.getLogger(__name__)


class BackboneError(UserError):
    """`backbone.name_or_path` names no loadable model; the message lists the accepted forms."""

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Backbone:
    """A frozen HF model + tokenizer and the prompt-injection logic around them."""

    model: torch.nn.Module
    tokenizer: object
    cfg: BackboneConfig
    name: str

    def __post_init__(self) -> None:
        self.is_encoder_decoder = bool(getattr(self.model.config, "is_encoder_decoder", False))
        self.model.requires_grad_(False)
        self.set_train_mode(True)
        tok = self.tokenizer
        if tok.pad_token_id is None:
            if tok.eos_token is None:
                raise ValueError(
                    f"backbone {self.name}: the tokenizer has neither a pad nor an eos token; "
                    "add a pad token to the tokenizer (tokenizer.add_special_tokens({'pad_token': ...}))"
                )
            # Decoder-only LMs often ship without a pad token; padding positions are masked
            # out of attention and loss, so reusing eos is safe.
            tok.pad_token = tok.eos_token
        if tok.eos_token_id is None:
            raise ValueError(f"backbone {self.name}: the tokenizer has no eos token; targets need one to stop")
        self._train_forward: torch.nn.Module | None = None

    def train_forward(self) -> torch.nn.Module:
        """The module `token_losses` runs: the whole model (encoder-decoders) or its body without the
        LM head (decoder-only), wrapped by `torch.compile` (dynamic shapes) when `cfg.compile`."""
        if self._train_forward is None:
            module = (self.model if self.is_encoder_decoder
                      else getattr(self.model, self.model.base_model_prefix))
            self._train_forward = torch.compile(module, dynamic=True) if self.cfg.compile else module
        return self._train_forward

    # ---------------------------------------------------------------- properties
    @property
    def hidden_size(self) -> int:
        hidden = model_hidden_size(self.model.config)
        assert hidden is not None, f"backbone {self.name}: its config names no hidden size"
        return hidden

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.cfg.dtype]

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def set_train_mode(self, training: bool) -> None:
        """Dropout on only while training and only if the config asks for it."""
        self.model.train(training and self.cfg.dropout)

    # ---------------------------------------------------------------- tokenisation
    def tokenize(self, inputs: list[str], targets: list[str]) -> tuple[list[list[int]], list[list[int]]]:
        """Token ids of inputs and targets (see `tokenize_counted`)."""
        ids, tgt, _ = self.tokenize_counted(inputs, targets)
        return ids, tgt

    def tokenize_counted(self, inputs: list[str], targets: list[str]
                         ) -> tuple[list[list[int]], list[list[int]], tuple[int, int]]:
        """Token ids of inputs and targets, and how many of each were cut. Called once per task
        (cached by the data layer).

        Truncation policy: inputs keep their first `max_input_len` tokens (the task prefix
        sits at the start; with `chat_template`, the first and last halves, so that the
        assistant turn survives); targets keep their first `max_target_len - 1` tokens plus eos.
        """
        tok = self.tokenizer
        max_in, max_tgt = self.cfg.max_input_len, self.cfg.max_target_len
        if self.is_encoder_decoder:
            enc = tok(inputs, add_special_tokens=True, truncation=True, max_length=max_in)["input_ids"]
            tgt = tok(targets, add_special_tokens=False)["input_ids"]
        elif self.cfg.chat_template:
            if not getattr(tok, "chat_template", None):
                raise ValueError(f"backbone.chat_template: the tokenizer of {self.name} has no chat template; "
                                 "set backbone.chat_template: false")
            texts = [tok.apply_chat_template([{"role": "user", "content": x}], add_generation_prompt=True,
                                             tokenize=False) for x in inputs]
            full = tok(texts, add_special_tokens=False)["input_ids"]
            # Keep the end of the template (the assistant turn) when truncating the user text.
            enc = [ids if len(ids) <= max_in else ids[: max_in // 2] + ids[len(ids) - (max_in - max_in // 2):]
                   for ids in full]
            tgt = tok(list(targets), add_special_tokens=False)["input_ids"]
        else:
            # The answer follows the input (and `answer_prefix`, kept whole) after a space, as continuous text.
            suffix = tok(self.cfg.answer_prefix, add_special_tokens=False)["input_ids"] if self.cfg.answer_prefix else []
            if len(suffix) >= max_in:
                raise BackboneError(f"backbone.answer_prefix {self.cfg.answer_prefix!r} is {len(suffix)} tokens, "
                                    f"which leaves no room for the input in backbone.max_input_len={max_in}. "
                                    "Fix: a shorter prefix or a larger max_input_len")
            max_in -= len(suffix)
            enc = tok(inputs, add_special_tokens=True, truncation=True, max_length=max_in)["input_ids"]
            enc = [list(ids) + suffix for ids in enc]
            tgt = tok([" " + t for t in targets], add_special_tokens=False)["input_ids"]
        if self.cfg.chat_template and not self.is_encoder_decoder:
            n_in = sum(len(ids) > max_in for ids in full)
        else:  # one more pass without truncation, once per task: how many inputs were cut
            n_in = sum(len(ids) > max_in for ids in tok(inputs, add_special_tokens=True)["input_ids"])
        cut = (n_in, sum(len(t) > max_tgt - 1 for t in tgt))
        tgt = [t[: max_tgt - 1] + [self.eos_id] for t in tgt]
        return [list(x) for x in enc], tgt, cut

    # ---------------------------------------------------------------- batching
    def collate_train(self, inputs: list[list[int]], targets: list[list[int]]) -> dict[str, torch.Tensor]:
        """Right-padded training batch. Labels are -100 on positions without loss."""
        pad = self.pad_id
        if self.is_encoder_decoder:
            S = max(len(x) for x in inputs)
            T = max(len(t) for t in targets)
            ids = torch.full((len(inputs), S), pad, dtype=torch.long)
            mask = torch.zeros((len(inputs), S), dtype=torch.long)
            labels = torch.full((len(inputs), T), -100, dtype=torch.long)
            for i, (x, t) in enumerate(zip(inputs, targets)):
                ids[i, : len(x)] = torch.tensor(x)
                mask[i, : len(x)] = 1
                labels[i, : len(t)] = torch.tensor(t)
            return {"input_ids": ids, "attention_mask": mask, "labels": labels}
        # decoder-only: one sequence [input, target]; loss on target tokens only
        N = max(len(x) + len(t) for x, t in zip(inputs, targets))
        ids = torch.full((len(inputs), N), pad, dtype=torch.long)
        mask = torch.zeros((len(inputs), N), dtype=torch.long)
        labels = torch.full((len(inputs), N), -100, dtype=torch.long)
        for i, (x, t) in enumerate(zip(inputs, targets)):
            seq = x + t
            ids[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = 1
            labels[i, len(x) : len(seq)] = torch.tensor(t)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def collate_generate(self, inputs: list[list[int]]) -> dict[str, torch.Tensor]:
        """Generation batch: right-padded for encoder-decoders, left-padded for decoder-only."""
        S = max(len(x) for x in inputs)
        ids = torch.full((len(inputs), S), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(inputs), S), dtype=torch.long)
        for i, x in enumerate(inputs):
            if self.is_encoder_decoder:
                ids[i, : len(x)] = torch.tensor(x)
                mask[i, : len(x)] = 1
            else:
                ids[i, S - len(x) :] = torch.tensor(x)
                mask[i, S - len(x) :] = 1
        return {"input_ids": ids, "attention_mask": mask}

    # ---------------------------------------------------------------- prompt injection
    def embed_with_prompt(
        self, prompts: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, left_padded: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[prompt; embed(input_ids)] and the extended attention mask.

        Must run inside the forward of the module DeepSpeed wraps when ZeRO-3 partitions
        the embedding (its hooks gather the weight there).
        """
        B, L, _ = prompts.shape
        embeds = self.model.get_input_embeddings()(input_ids)  # (B, S, H)
        prompts = prompts.to(embeds.dtype)
        ones = attention_mask.new_ones((B, L))
        if left_padded:
            # Left padding for decoder-only generation: [pads, prompt, input] keeps the prompt
            # at position 0 (position ids come from the mask), as in training.
            S = input_ids.shape[1]
            pad_len = (attention_mask == 0).sum(1)  # (B,)
            out = torch.empty((B, L + S, embeds.shape[-1]), dtype=embeds.dtype, device=embeds.device)
            mask = torch.zeros((B, L + S), dtype=attention_mask.dtype, device=attention_mask.device)
            for i in range(B):
                p = int(pad_len[i])
                out[i, :p] = embeds[i, :p]
                out[i, p : p + L] = prompts[i]
                out[i, p + L :] = embeds[i, p:]
                mask[i, p:] = 1
            return out, mask
        return torch.cat([prompts, embeds], dim=1), torch.cat([ones, attention_mask], dim=1)  # (B, L+S, H)

    def token_losses(self, prompts: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token loss of every target token in the batch.

        Args:
            prompts: (B, L, H), row i's prompt.
            batch: from `collate_train`, on the model's device.
        Returns:
            (losses (M,), rows (M,)): label-smoothed NLL in fp32 of the M target tokens and
            the batch row each belongs to. A mean over all M equals HF's token-mean loss.
        """
        labels = batch["labels"]
        embeds, mask = self.embed_with_prompt(prompts, batch["input_ids"], batch["attention_mask"])
        eps = self.cfg.label_smoothing
        if self.is_encoder_decoder:
            decoder_input_ids = self.model.prepare_decoder_input_ids_from_labels(labels=labels)
            logits = self.train_forward()(inputs_embeds=embeds, attention_mask=mask,
                                          decoder_input_ids=decoder_input_ids, use_cache=False).logits  # (B, T, V)
            rows, pos = self._target_positions(batch)
            losses = F.cross_entropy(logits[rows, pos].float(), labels[rows, pos], label_smoothing=eps,
                                     reduction="none")
            return losses, rows
        # Decoder-only: run the body, then the LM head only where a target token is predicted
        # (position t predicts token t+1), so the (B, N, V) logits are never materialised.
        L = prompts.shape[1]
        hidden = self.train_forward()(inputs_embeds=embeds, attention_mask=mask,
                                      use_cache=False).last_hidden_state  # (B, L+N, H)
        # The target token at labels position p sits at L + p of the prompted sequence and is
        # predicted from position L + p - 1.
        rows, pos = self._target_positions(batch)
        if L == 0:  # no prompt (never in training): a sequence's first token has no position before it
            keep = pos > 0
            rows, pos = rows[keep], pos[keep]
        logits = self.model.get_output_embeddings()(hidden[rows, L + pos - 1])  # (M, V)
        losses = F.cross_entropy(logits.float(), labels[rows, pos], label_smoothing=eps, reduction="none")
        return losses, rows

    @staticmethod
    def _target_positions(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, labels position) of every target token, row-major: given by the batch when it was
        gathered from padded rows (`train.rows`: no device read), else from the labels."""
        if "target_rows" in batch:
            return batch["target_rows"], batch["target_pos"]
        where = (batch["labels"] != -100).nonzero()
        return where[:, 0], where[:, 1]

    @torch.no_grad()
    def generate(self, prompts: torch.Tensor, batch: dict[str, torch.Tensor]) -> list[str]:
        """Decode with the prompt (beam search, `num_beams`, `max_new_tokens`); one string per row."""
        out = self.generate_ids(prompts, batch)
        return [s.strip() for s in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    @torch.no_grad()
    def generate_ids(self, prompts: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The token ids `generate` decodes, (B, T): the new tokens only (encoder-decoders start
        with the decoder start token)."""
        left = not self.is_encoder_decoder
        embeds, mask = self.embed_with_prompt(prompts, batch["input_ids"], batch["attention_mask"], left_padded=left)
        return self.model.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            num_beams=self.cfg.num_beams,
            # a beam-search flag: set with greedy decoding, transformers warns on every call
            early_stopping=self.cfg.num_beams > 1,
            max_new_tokens=self.cfg.max_new_tokens,
            do_sample=False,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_id,
        )  # with inputs_embeds only, generate returns the new tokens alone for both families


# -------------------------------------------------------------------- loading


def _looks_like_path(name: str) -> bool:
    # Hub names are "name" or "org/name"; anything else with a slash is meant as a local path.
    return name.startswith(("/", "./", "../", "~")) or name.count("/") >= 2


def _cpu_has_fast_bf16(cpuinfo: str | None = None) -> bool:
    """AVX512-bf16 or AMX in /proc/cpuinfo's flags (measured here: bf16 matmul ~4x fp32)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = next((ln.split(":", 1)[1].split() for ln in cpuinfo.splitlines() if ln.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str, device_type: str, cpuinfo: str | None = None) -> tuple[str, str]:
    """(concrete dtype, why) for backbone.dtype; "auto" becomes bfloat16 where it is fast, else float32.

    `device_type` is where the backbone will run ("cuda" or "cpu"), which may differ from this
    process's device (a CPU driver planning GPU work): without a local GPU to ask, CUDA is taken
    to support bf16 (Ampere and newer) and the reason says so.
    """
    if dtype != "auto":
        return dtype, "as configured"
    if device_type == "cuda":
        if not torch.cuda.is_available():
            return "bfloat16", "CUDA target (assumed Ampere or newer: bf16)"
        if torch.cuda.is_bf16_supported():
            return "bfloat16", f"CUDA {torch.cuda.get_device_name()} supports bf16"
        return "float32", f"CUDA {torch.cuda.get_device_name()} has no fast bf16"
    if _cpu_has_fast_bf16(cpuinfo):
        return "bfloat16", "CPU with AVX512-bf16 / AMX"
    return "float32", "CPU without AVX512-bf16 / AMX"


def pick_device(use_gpu: bool | None = None) -> torch.device:
    """cuda when asked for (None: when available) and present, else cpu."""
    if use_gpu is None:
        use_gpu = torch.cuda.is_available()
    return torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")


def resolve_auto_dtype(cfg, device_type: str):
    """`cfg` (an IPTConfig) with backbone.dtype "auto" made concrete for `device_type`; logged once.
    Every driver calls it first, so job ids, provenance and DeepSpeed see the dtype actually used."""
    from dataclasses import replace

    if cfg.backbone.dtype != "auto":
        return cfg
    dtype, why = resolve_dtype("auto", device_type)
    log.info("backbone.dtype auto -> %s (%s)", dtype, why)
    return replace(cfg, backbone=replace(cfg.backbone, dtype=dtype))


def _offline() -> bool:
    import os

    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _accepted_forms(name: str) -> str:
    """The accepted values of backbone.name_or_path, with the closest built-in name if one is close."""
    import difflib

    from ipt_dist.modeling import tiny

    builtin = [*tiny.TINY_KINDS, *tiny.DEMO_KINDS, "smollm2-135m"]
    close = difflib.get_close_matches(name, builtin, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (f"{hint}give a local model directory (saved with save_pretrained), a hub model name (e.g. "
            f"facebook/bart-base; needs network or the HF cache), 'smollm2-135m', or one of {builtin}")


def load_model_and_tokenizer(cfg: BackboneConfig):
    """Resolve `cfg.name_or_path` / `cfg.arch` to (model, tokenizer, name) without freezing.

    Raises:
        BackboneError: a local path that does not exist or holds no model, a name that does not
            load (unknown on the hub, or offline), with the accepted forms and the closest name.
        ValueError: an unknown tiny kind or architecture.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from ipt_dist.modeling import tiny

    dtype = _DTYPES[cfg.dtype]
    if cfg.arch:
        config = tiny.arch_config(cfg.arch)
        cls = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = cls.from_config(config, dtype=dtype)
        return model, tiny.build_tiny_tokenizer(), backbone_name(cfg)
    name = backbone_name(cfg)
    if name in tiny.TINY_KINDS:
        model, tok = tiny.build_tiny_model(name)
        return model.to(dtype), tok, name
    src, config = _checkpoint_config(cfg)
    cls = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    model = cls.from_pretrained(src, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(src)
    return model, tok, name


def _checkpoint_config(cfg: BackboneConfig):
    """(source path or hub name, transformers config) of a backbone stored as a checkpoint."""
    from transformers import AutoConfig

    from ipt_dist.modeling import tiny

    name = alias = cfg.name_or_path
    if name in tiny.DEMO_KINDS:
        name = tiny.demo_backbone_path(name, cfg.cache_dir)
    if name.lower() in ("smollm2-135m", "smollm2-135m-instruct"):
        from ipt_dist.modeling.smollm2 import smollm2_checkpoint

        name = smollm2_checkpoint(cfg.cache_dir)
    path = Path(name).expanduser()
    if _looks_like_path(name) and not path.exists():
        raise BackboneError(f"backbone.name_or_path: {name} does not exist. Fix: {_accepted_forms(alias)}")
    if path.is_dir() and not (path / "config.json").is_file() and not any(path.glob("*.gguf")):
        raise BackboneError(f"backbone.name_or_path: {path} is a directory without a model (no config.json). "
                            f"Fix: {_accepted_forms(alias)}")
    src = str(path) if path.exists() else name
    try:
        return src, AutoConfig.from_pretrained(src)
    except (OSError, ValueError) as exc:  # unknown hub name, offline, gated, malformed config.json
        offline = " (HF_HUB_OFFLINE is set: only local paths and cached models load)" if _offline() else ""
        raise BackboneError(f"backbone.name_or_path: cannot load {name!r}{offline}: {first_line(exc).rstrip('.')}. "
                            f"Fix: {_accepted_forms(alias)}") from exc


def load_model_config(cfg: BackboneConfig):
    """The transformers config of the backbone `cfg` names, without building or loading its weights.

    Raises:
        BackboneError / ValueError: as `load_model_and_tokenizer`.
    """
    from ipt_dist.modeling import tiny

    if cfg.arch:
        return tiny.arch_config(cfg.arch)
    if cfg.name_or_path in tiny.TINY_KINDS:
        return tiny.tiny_config(cfg.name_or_path, len(tiny.build_tiny_tokenizer()))
    return _checkpoint_config(cfg)[1]


def backbone_name(b: BackboneConfig) -> str:
    """The name a backbone goes by (`Backbone.name`; what prompt files and MSF checkpoints record)."""
    return f"arch:{b.arch}" if b.arch else b.name_or_path


def model_hidden_size(config) -> int | None:
    """Hidden size H of a transformers model config (`d_model` for T5/BART, `hidden_size` for LLaMA,
    `n_embd` for GPT-2); None when it names none."""
    for attr in ("d_model", "hidden_size", "n_embd"):
        value = getattr(config, attr, None)
        if value:
            return int(value)
    return None


def configured_hidden_size(b: BackboneConfig) -> int | None:
    """Hidden size H of the configured backbone without loading its weights or downloading anything
    (the demo backbones need not be pretrained yet); None when only loading it would tell."""
    from ipt_dist.modeling import tiny

    if b.arch:
        c = tiny.arch_config(b.arch)
    elif b.name_or_path in tiny.TINY_KINDS or b.name_or_path in tiny.DEMO_KINDS:
        kind = tiny.DEMO_KINDS.get(b.name_or_path, b.name_or_path)
        c = tiny.tiny_config(kind, vocab_size=8)  # the hidden size does not depend on the vocabulary
    elif b.name_or_path.lower().startswith("smollm2-135m"):
        c = tiny.arch_config("smollm2-135m")
    else:
        try:
            from transformers import AutoConfig

            c = AutoConfig.from_pretrained(b.name_or_path)
        except Exception:  # noqa: BLE001 - the caller loads it later and fails with the loader's own error
            return None
    return model_hidden_size(c)


def build_backbone(cfg: BackboneConfig, device: str | torch.device | None = None) -> Backbone:
    """Load, freeze and place the backbone.

    Raises:
        BackboneError: see `load_model_and_tokenizer`; float16 on a machine without CUDA.
        ValueError: the tokenizer lacks both pad and eos tokens.
    """
    if cfg.dtype == "auto":  # a driver resolves it (resolve_auto_dtype); here only the device is known
        from dataclasses import replace

        dev = torch.device(device) if device is not None else torch.device("cpu")
        cfg = replace(cfg, dtype=resolve_dtype("auto", dev.type)[0])
    if cfg.dtype == "float16" and not torch.cuda.is_available():
        raise BackboneError("backbone.dtype: float16 on a machine without CUDA: CPUs have no fast float16 kernels "
                            "and float16 loses range that bfloat16 keeps. Fix: use bfloat16 (fast on CPUs with "
                            "AVX512-bf16 or AMX) or float32")
    model, tok, name = load_model_and_tokenizer(cfg)
    if cfg.answer_prefix and getattr(model.config, "is_encoder_decoder", False):
        raise BackboneError(f"backbone.answer_prefix: {name} is an encoder-decoder, whose decoder already "
                            "starts the answer; the separator is for decoder-only backbones. Fix: remove "
                            "backbone.answer_prefix")
    if device is not None:
        model.to(device)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return Backbone(model=model, tokenizer=tok, cfg=cfg, name=name)
