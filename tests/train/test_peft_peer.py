"""Peer check: our PT on a tiny T5 matches Hugging Face PEFT's PromptTuning step for step."""

import pytest
import torch

from ipt_dist.config import BackboneConfig
from ipt_dist.modeling.backbone import build_backbone
from ipt_dist.train.optim import BatchedAdamW, linear_warmup_decay
from ipt_dist.train.steps import pt_step

peft = pytest.importorskip("peft")

INPUTS = [" [demo] a great movie", " [demo] bad plot", " [demo] the food was good", " [demo] sad"]
TARGETS = ["positive", "negative", "positive", "negative"]


# bf16: PEFT computes its loss in bf16 (spacing 0.03 near 6) and trains its prompt in bf16, ours
# reduces the bf16 logits in fp32 and keeps the prompt fp32: measured differences <= 0.032 (loss)
# and 0.036 (prompt) over these 6 steps.
@pytest.mark.parametrize("dtype, loss_tol, param_tol", [("float32", 1e-5, 1e-6), ("bfloat16", 0.05, 0.05)])
def test_pt_matches_peft_prompt_tuning_step_for_step(dtype, loss_tol, param_tol):
    L, steps, lr, clip = 5, 6, 0.05, 0.1
    ours = build_backbone(BackboneConfig(name_or_path="tiny-t5", dropout=False, label_smoothing=0.0, dtype=dtype))
    theirs = build_backbone(BackboneConfig(name_or_path="tiny-t5", dropout=False, label_smoothing=0.0, dtype=dtype))
    H = ours.hidden_size
    init = torch.randn(L, H, generator=torch.Generator().manual_seed(0)) * 0.02

    pcfg = peft.PromptTuningConfig(task_type=peft.TaskType.SEQ_2_SEQ_LM, num_virtual_tokens=L,
                                   num_transformer_submodules=1, token_dim=H)
    pmodel = peft.get_peft_model(theirs.model, pcfg)
    emb = pmodel.prompt_encoder["default"].embedding
    with torch.no_grad():
        emb.weight.copy_(init)
    pmodel.eval()  # dropout off, as in ours
    popt = torch.optim.AdamW([emb.weight], lr=lr, eps=1e-8, weight_decay=0.0)
    psched = torch.optim.lr_scheduler.LambdaLR(popt, lambda s: linear_warmup_decay(s, steps, 2))

    prompt = init.clone().unsqueeze(0).requires_grad_(True)  # (1, L, H)
    opt = BatchedAdamW(prompt, [lr], [clip])
    x, y = ours.tokenize(INPUTS, TARGETS)
    for step in range(steps):
        idx = [(step + i) % 4 for i in range(2)]  # same data order for both
        batch = ours.collate_train([x[i] for i in idx], [y[i] for i in idx])
        batch["group"] = torch.zeros(2, dtype=torch.long)
        our_loss = pt_step(ours, prompt, opt, batch, linear_warmup_decay(step, steps, 2))

        popt.zero_grad()
        out = pmodel(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_([emb.weight], clip)
        popt.step()
        psched.step()
        assert abs(float(our_loss) - float(out.loss)) < loss_tol, (step, float(our_loss), float(out.loss))
    torch.testing.assert_close(prompt.detach()[0], emb.weight.detach().float(), rtol=1e-5, atol=param_tol)
