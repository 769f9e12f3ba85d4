"""A bf16 backbone trains prompts as well as fp32: a demo PT run reaches the same dev scores
within a small margin (prompts and optimiser state stay fp32 either way)."""

from __future__ import annotations

import pytest

from ipt_dist.config import load_config
from ipt_dist.stages.pt import run_pt

# Measured (demo-t5, 3 tasks, 40 steps, one data draw): mean best dev 0.750 (fp32) vs 0.729
# (bf16), mean test 0.740 vs 0.781. The margin asserted is 0.1.
MARGIN = 0.1


@pytest.mark.slow
def test_demo_pt_reaches_the_same_dev_score_in_bf16_and_fp32(tmp_path, demo_dir):
    scores = {}
    for dtype in ("float32", "bfloat16"):
        cfg = load_config(None, [
            f"output_dir={tmp_path / dtype}", f"data.data_dir={demo_dir}",
            "data.tasks=[demo_sentiment, demo_topic, demo_parity]", "data.unseen_tasks=[]",
            "backbone.name_or_path=demo-t5", "backbone.dropout=false", "backbone.num_beams=1",
            "backbone.max_new_tokens=8", "backbone.max_input_len=48", "backbone.max_target_len=8",
            "backbone.label_smoothing=0.0", "data.train_size=24", "data.data_seed=42", "data.max_examples=32",
            "pt.prompt_len=8", "pt.lr=0.3", "pt.batch_size=8", "pt.steps=40", "pt.eval_every=20",
            "pt.grad_clip=1.0", f"backbone.dtype={dtype}", "tracking.enabled=false"])
        results = run_pt(cfg)
        scores[dtype] = sum(r["best_dev"] for r in results) / len(results)
    assert scores["float32"] > 0.5  # PT learned something, so the comparison means something
    assert abs(scores["bfloat16"] - scores["float32"]) <= MARGIN, scores
