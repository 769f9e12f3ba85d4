import torch

from ipt_dist.train.optim import BatchedAdamW, linear_warmup_decay, warmup_steps_for


def test_schedule_matches_transformers():
    from transformers import get_linear_schedule_with_warmup

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = get_linear_schedule_with_warmup(opt, 3, 10)
    for step in range(12):
        assert abs(opt.param_groups[0]["lr"] - linear_warmup_decay(step, 10, 3)) < 1e-12
        opt.step()
        sched.step()
    assert warmup_steps_for(100, 0.06) == 6 and warmup_steps_for(100, 0.0) == 0


def test_each_row_matches_torch_adamw_with_its_own_lr_and_clip():
    torch.manual_seed(0)
    K, shape = 3, (4, 5)
    lrs, clips = [1e-2, 3e-2, 1e-1], [0.1, 0.0, 1.0]
    start = torch.randn(K, *shape)
    batched = start.clone().requires_grad_(True)
    opt = BatchedAdamW(batched, lrs, clips, eps=1e-8, weight_decay=0.01)
    refs = [start[k].clone().requires_grad_(True) for k in range(K)]
    ref_opts = [torch.optim.AdamW([r], lr=lrs[k], eps=1e-8, weight_decay=0.01) for k, r in enumerate(refs)]
    targets = torch.randn(K, *shape)
    for step in range(6):
        mult = linear_warmup_decay(step, 6, 2)
        opt.zero_grad()
        ((batched - targets) ** 3).sum().backward()
        opt.step(mult)
        for k in range(K):
            ref_opts[k].zero_grad()
            ((refs[k] - targets[k]) ** 3).sum().backward()
            if clips[k] > 0:
                torch.nn.utils.clip_grad_norm_([refs[k]], clips[k])
            ref_opts[k].param_groups[0]["lr"] = lrs[k] * mult
            ref_opts[k].step()
    for k in range(K):
        torch.testing.assert_close(batched[k].detach(), refs[k].detach(), rtol=1e-6, atol=1e-7)
