"""Exact losses of 4-step tiny runs: catches silent numeric drift in the core path
(tokenisation, prompt injection, label-smoothed loss, per-job optimiser and schedule; for MSF the
autoencoder's seeded init, the sum/mean LM reduction, the reconstruction MSE and AdamW + schedule)."""

from dataclasses import replace

import pytest
import torch

from ipt_dist.config import BackboneConfig, IPTConfig
from ipt_dist.modeling.autoencoder import build_autoencoder
from ipt_dist.modeling.backbone import build_backbone
from ipt_dist.train.optim import BatchedAdamW, linear_warmup_decay
from ipt_dist.train.steps import MSFModel, msf_step, pt_step

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


MSF_EXPECTED = {
    # per step: [loss as optimised, token-mean LM loss, reconstruction MSE]; two tasks' prompts (L=3),
    # d=4, mid 16, alpha 2, AdamW lr 0.01, clip 1.0, warmup 1 step (step 0 is an lr-0 step). Recorded
    # on main before the MSF pieces moved to components (identical there and here).
    ("tiny-t5", "sum"): [[95.88111877441406, 6.843393802642822, 0.03680586442351341],
                         [95.88111877441406, 6.843393802642822, 0.03680586442351341],
                         [93.15533447265625, 6.648528575897217, 0.03796671703457832],
                         [91.89623260498047, 6.558371543884277, 0.03951634094119072]],
    ("tiny-t5", "mean"): [[6.91700553894043, 6.843393802642822, 0.03680586442351341],
                          [6.91700553894043, 6.843393802642822, 0.03680586442351341],
                          [6.716499328613281, 6.644574165344238, 0.03596223518252373],
                          [6.625481605529785, 6.552518367767334, 0.036481332033872604]],
    ("tiny-llama", "sum"): [[89.43175506591797, 6.382724761962891, 0.03680586442351341],
                            [89.43175506591797, 6.382724761962891, 0.03680586442351341],
                            [88.39571380615234, 6.308382987976074, 0.03917523846030235],
                            [87.87730407714844, 6.2710041999816895, 0.041623953729867935]],
}


@pytest.mark.parametrize(("kind", "reduction"), sorted(MSF_EXPECTED))
def test_four_msf_step_losses_are_exact(kind, reduction):
    bb = build_backbone(BackboneConfig(name_or_path=kind, dropout=False, label_smoothing=0.1))
    x, y = bb.tokenize([" [demo] a great movie", " [demo] bad plot", " [demo] the food was good", " [demo] sad"],
                       ["positive", "negative", "positive", "negative"])
    prompts = torch.randn(2, 3, bb.hidden_size, generator=torch.Generator().manual_seed(0)) * 0.02  # (T, L, H)
    base = IPTConfig()
    cfg = replace(base, pt=replace(base.pt, prompt_len=3), msf=replace(base.msf, d=4, mid_dim=16, seed=0))
    ae = build_autoencoder(cfg, bb.hidden_size)
    model = MSFModel(bb, ae, prompts, alpha=2.0, lm_reduction=reduction)
    opt = torch.optim.AdamW(ae.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: linear_warmup_decay(s, 4, 1))
    batch = bb.collate_train(x, y)
    batch["group"] = torch.tensor([0, 0, 1, 1])  # rows 0-1 use task 0's prompt, rows 2-3 task 1's
    got = []
    for _ in range(4):
        stats = msf_step(model, opt, sched, batch, 1.0)
        got.append([float(stats["loss"]), float(stats["lm_loss"]), float(stats["rec_loss"])])
    torch.testing.assert_close(torch.tensor(got), torch.tensor(MSF_EXPECTED[(kind, reduction)]), rtol=1e-5,
                               atol=1e-5)
