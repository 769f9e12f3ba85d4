"""Exact losses of a 4-step tiny run: catches silent numeric drift in the core path
(tokenisation, prompt injection, label-smoothed loss, per-job optimiser and schedule)."""

import pytest
import torch

from ipt_dist.config import BackboneConfig
from ipt_dist.modeling.backbone import build_backbone
from ipt_dist.train.optim import BatchedAdamW, linear_warmup_decay
from ipt_dist.train.steps import pt_step

EXPECTED = {
    # per step, per job (two jobs packed: lr 0.1 / clip 0.1 and lr 0.2 / clip 1.0); warmup 1 step
    # makes step 0 an lr-0 step, so steps 0 and 1 see the same prompts.
    "tiny-t5": [[6.961505889892578, 6.990264892578125], [6.961505889892578, 6.990264892578125],
                [6.457373142242432, 6.434501647949219], [6.294379234313965, 6.347862243652344]],
    "tiny-llama": [[6.388446807861328, 6.489471435546875], [6.388446807861328, 6.489471435546875],
                   [6.1557230949401855, 6.242663860321045], [6.138267517089844, 6.239415168762207]],
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_four_step_losses_are_exact(kind):
    bb = build_backbone(BackboneConfig(name_or_path=kind, dropout=False, label_smoothing=0.1))
    x, y = bb.tokenize([" [demo] a great movie", " [demo] bad plot", " [demo] the food was good", " [demo] sad"],
                       ["positive", "negative", "positive", "negative"])
    P = (torch.randn(2, 3, bb.hidden_size, generator=torch.Generator().manual_seed(0)) * 0.02).requires_grad_(True)
    opt = BatchedAdamW(P, [0.1, 0.2], [0.1, 1.0])
    batch = bb.collate_train(x, y)
    batch["group"] = torch.tensor([0, 0, 1, 1])
    got = [pt_step(bb, P, opt, batch, linear_warmup_decay(s, 4, 1)).tolist() for s in range(4)]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(EXPECTED[kind]), rtol=1e-5, atol=1e-5)
