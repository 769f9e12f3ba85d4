"""Each stage learns; only the intended parameters train."""

import pytest
import torch

from ipt_dist.config import load_config
from ipt_dist.data.sampling import TaskBalancedSampler
from ipt_dist.modeling.autoencoder import PromptAutoencoder
from ipt_dist.modeling.backbone import build_backbone
from ipt_dist.stages.common import load_tokenized
from ipt_dist.train.optim import BatchedAdamW
from ipt_dist.train.packed import Job, PackSettings, train_pack
from ipt_dist.train.steps import MSFModel, collate_msf, ist_step, msf_step, pt_step
from tests.conftest import tiny_overrides

TASKS = ["demo_sentiment", "demo_topic", "demo_parity"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from ipt_dist.data.tasks import write_demo_tasks

    root = tmp_path_factory.mktemp("steps")
    write_demo_tasks(root / "data")
    cfg = load_config(None, tiny_overrides(root / "run", root / "data"))
    bb = build_backbone(cfg.backbone)
    data = load_tokenized(cfg, bb, TASKS)
    return cfg, bb, data


def _packed_batch(bb, data, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    inputs, targets, groups = [], [], []
    for k, t in enumerate(TASKS):
        split = data[t].train
        for i in torch.randint(len(split), (n,), generator=g).tolist():
            inputs.append(split.inputs[i])
            targets.append(split.targets[i])
            groups.append(k)
    batch = bb.collate_train(inputs, targets)
    batch["group"] = torch.tensor(groups)
    return batch


def test_pt_step_lowers_loss(setup):
    _, bb, data = setup
    prompts = (torch.randn(3, 4, bb.hidden_size) * 0.02).requires_grad_(True)
    opt = BatchedAdamW(prompts, [0.3] * 3, [1.0] * 3)
    batch = _packed_batch(bb, data)
    losses = [pt_step(bb, prompts, opt, batch, 1.0) for _ in range(30)]
    assert (losses[-1] < losses[0] - 0.5).all(), (losses[0], losses[-1])
    assert all(p.grad is None for p in bb.model.parameters())


def _memorised_decoder(bb, batch):
    """A decoder that spans useful prompts, as MSF would give: PT prompts of the 3 tasks,
    memorised by the autoencoder (reconstruction only, no backbone). Its weights still require grad."""
    prompts = (torch.randn(3, 4, bb.hidden_size) * 0.02).requires_grad_(True)
    opt = BatchedAdamW(prompts, [0.3] * 3, [1.0] * 3)
    for _ in range(30):
        pt_step(bb, prompts, opt, batch, 1.0)
    torch.manual_seed(0)
    ae = PromptAutoencoder(d=4, prompt_len=4, hidden=bb.hidden_size, mid_dim=32)
    ae_opt = torch.optim.Adam(ae.parameters(), lr=1e-2)
    for _ in range(300):
        ae_opt.zero_grad()
        torch.nn.functional.mse_loss(ae(prompts.detach()), prompts.detach()).backward()
        ae_opt.step()
    ae.zero_grad(set_to_none=True)
    return ae.decoder


def _grad_leaves(t: torch.Tensor) -> list[torch.Tensor]:
    """The leaf tensors a backward from `t` accumulates gradients into (autograd's AccumulateGrad nodes)."""
    seen, leaves, stack = set(), [], [t.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):
            leaves.append(node.variable)
        stack.extend(f for f, _ in node.next_functions)
    return leaves


def test_ist_step_lowers_loss(setup):
    _, bb, data = setup
    batch = _packed_batch(bb, data)
    decoder = _memorised_decoder(bb, batch).requires_grad_(False)
    z = (torch.randn(1, 4) * 0.02).requires_grad_(True)
    one_task = {k: v[batch["group"] == 0] for k, v in batch.items()}
    one_task["group"].zero_()
    opt = BatchedAdamW(z, [0.1], [1.0])
    losses = [ist_step(bb, decoder, z, opt, one_task, 1.0) for _ in range(30)]
    assert losses[-1] < losses[0] - 0.3, (losses[0], losses[-1])
    assert all(p.grad is None for p in decoder.parameters())


def test_train_pack_ist_trains_exactly_jobs_times_d_parameters(setup, monkeypatch):
    """Observed inside a real train_pack call, not a list the test builds: every loss backpropagates
    into one leaf tensor, the (K, d) z the optimiser holds; train_pack itself freezes the decoder
    (handed over still requiring grad) and the backbone, which end with no gradient."""
    from ipt_dist.train import packed

    _, bb, data = setup
    decoder = _memorised_decoder(bb, _packed_batch(bb, data))
    assert all(p.requires_grad for p in decoder.parameters())  # train_pack must freeze it itself
    optimisers, leaves = [], []

    class SpyAdamW(BatchedAdamW):
        def __init__(self, param, *a, **kw):
            super().__init__(param, *a, **kw)
            optimisers.append(self)

    def spy_token_losses(prompts, batch):
        losses, rows = type(bb).token_losses(bb, prompts, batch)
        if losses.requires_grad:  # training steps (evaluation decodes under no_grad)
            leaves.append(_grad_leaves(losses))
        return losses, rows

    monkeypatch.setattr(packed, "BatchedAdamW", SpyAdamW)
    monkeypatch.setattr(bb, "token_losses", spy_token_losses)
    jobs = [Job(f"j{t}", t, "ist", lr=0.1, seed=k, grad_clip=1.0) for k, t in enumerate(TASKS)]
    steps = 4
    res = train_pack(bb, jobs, {j.job_id: data[j.task] for j in jobs},
                     PackSettings(steps=steps, batch_size=4, eval_every=steps, eval_max_examples=2), decoder=decoder)
    [opt] = optimisers
    assert opt.param.shape == (len(jobs), decoder.d) and opt.param.numel() == len(jobs) * 4
    assert len(leaves) == steps
    for step_leaves in leaves:
        assert len(step_leaves) == 1 and step_leaves[0] is opt.param  # z alone receives gradients
    assert all(not p.requires_grad and p.grad is None for p in [*decoder.parameters(), *bb.model.parameters()])
    assert all(r.best_param.shape == (4,) for r in res)


# alpha balances the LM term: this 12-row batch has 34 target tokens, so its token sum is 34x its mean.
@pytest.mark.parametrize("reduction, alpha", [("sum", 30.0), ("mean", 1.0)])
def test_msf_step_lowers_loss_and_only_the_autoencoder_trains(setup, reduction, alpha):
    _cfg, bb, data = setup
    torch.manual_seed(0)
    prompts = torch.randn(3, 4, bb.hidden_size) * 0.5
    ae = PromptAutoencoder(d=4, prompt_len=4, hidden=bb.hidden_size, mid_dim=32)
    model = MSFModel(bb, ae, prompts, alpha=alpha, lm_reduction=reduction)
    opt = torch.optim.AdamW(ae.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    sampler = TaskBalancedSampler([len(data[t].train) for t in TASKS], 12, seed=0)
    tok = [data[t] for t in TASKS]
    first = msf_step(model, opt, sched, collate_msf(bb, tok, sampler.global_batch_at(0)), 1.0)
    for _ in range(40):
        last = msf_step(model, opt, sched, collate_msf(bb, tok, sampler.global_batch_at(0)), 1.0)
    assert last["loss"] < first["loss"] - 0.5
    assert last["lm_loss"] < first["lm_loss"] - 0.5 and last["rec_loss"] < first["rec_loss"], (first, last)
    assert all(p.grad is None for p in bb.model.parameters())
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if n.startswith("autoencoder.")}


def _msf_model(bb, reduction, alpha=2.0):
    torch.manual_seed(0)
    prompts = torch.randn(3, 4, bb.hidden_size) * 0.5
    ae = PromptAutoencoder(d=4, prompt_len=4, hidden=bb.hidden_size, mid_dim=32)
    return MSFModel(bb, ae, prompts, alpha=alpha, lm_reduction=reduction)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_msf_loss_is_the_token_sum_or_mean_plus_alpha_mse(setup, reduction):
    """The objective, computed by hand: HF's own token-mean loss (no label smoothing here) x tokens."""
    _, bb, data = setup
    assert bb.cfg.label_smoothing == 0.0
    model = _msf_model(bb, reduction)
    batch = collate_msf(bb, [data[t] for t in TASKS], [(0, 0), (1, 3), (2, 5), (0, 7), (1, 1)])
    n = int((batch["labels"] != -100).sum())
    assert n > len(batch["labels"])  # several target tokens per row: sum and mean differ
    with torch.no_grad():
        P = model.task_prompts[batch["group"]]  # (B, L, H)
        recon = model.autoencoder(P)
        embeds, mask = bb.embed_with_prompt(recon, batch["input_ids"], batch["attention_mask"])
        hf_mean = bb.model(inputs_embeds=embeds, attention_mask=mask, labels=batch["labels"]).loss
        mse = ((recon - P) ** 2).mean()
        lm = hf_mean * n if reduction == "sum" else hf_mean
        loss, lm_sum, rec = model(batch)
    torch.testing.assert_close(loss, lm + 2.0 * mse, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lm_sum, hf_mean * n, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rec, mse)
    opt = torch.optim.SGD(model.autoencoder.parameters(), lr=0.0)
    stats = msf_step(model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), batch, 0.0)
    torch.testing.assert_close(stats["loss"], loss)  # the logged loss is the objective as optimised
    torch.testing.assert_close(stats["lm_loss"], hf_mean, rtol=1e-5, atol=1e-6)  # always the token mean
    assert int(stats["target_tokens"]) == n and float(stats["grad_norm"]) > 0


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_msf_micro_batches_average_to_the_global_batch_gradient(setup, reduction):
    """What DeepSpeed does with 2 ranks x accum 2: average the gradients of 4 equal-row micro-batches,
    each called with replicas=4 (and, for "mean", the global token count): the gradient of the whole batch."""
    _, bb, data = setup
    tok = [data[t] for t in TASKS]
    pairs = TaskBalancedSampler([len(d.train) for d in tok], 12, seed=3).global_batch_at(0)
    model = _msf_model(bb, reduction)
    params = list(model.autoencoder.parameters())
    full = collate_msf(bb, tok, pairs)
    whole = torch.autograd.grad(model(full)[0], params)
    micro = [collate_msf(bb, tok, pairs[i:i + 3]) for i in range(0, 12, 3)]
    assert len({int((m["labels"] != -100).sum()) for m in micro}) > 1, "uneven token counts make the test bite"
    n = int((full["labels"] != -100).sum())
    avg = [torch.zeros_like(p) for p in params]
    for m in micro:
        for a, g in zip(avg, torch.autograd.grad(model(m, replicas=4, global_tokens=n)[0], params)):
            a += g / 4
    for a, w in zip(avg, whole):
        torch.testing.assert_close(a, w, rtol=1e-4, atol=1e-6)


def test_train_pack_tracks_best_dev_and_scores_test(setup):
    _, bb, data = setup
    jobs = [Job(f"j{t}", t, "pt", lr=0.3, seed=1, grad_clip=1.0) for t in TASKS]
    res = train_pack(bb, jobs, {j.job_id: data[j.task] for j in jobs},
                     PackSettings(steps=6, batch_size=4, eval_every=3), prompt_len=4)
    for r in res:
        assert [s for s, _ in r.dev_curve] == [3, 6]
        assert r.best_dev == max(v for _, v in r.dev_curve)
        assert 0.0 <= r.test <= 1.0 and r.best_param.shape == (4, bb.hidden_size)
        rec = r.record()
        assert rec["task"] == r.job.task and rec["metric"] == data[r.job.task].info.metric


def test_packs_reject_mixed_kinds_and_missing_data(setup):
    _, bb, _data = setup
    jobs = [Job("a", TASKS[0], "pt"), Job("b", TASKS[1], "ist")]
    with pytest.raises(ValueError, match="one kind"):
        train_pack(bb, jobs, {}, PackSettings(), prompt_len=4)
    with pytest.raises(ValueError, match="has no data"):
        train_pack(bb, jobs[:1], {}, PackSettings(), prompt_len=4)


def test_sharded_evaluate_groups_equals_one_process(setup):
    """`evaluate_groups` over 2 ranks (each generates every 2nd example, shards padded to equal
    length, predictions all-gathered) gives every rank the one-process scores and predictions.
    The ranks run as threads here; all_gather is a real gather between them."""
    import threading

    from ipt_dist.train.steps import evaluate_groups

    _, bb, data = setup
    bb.set_train_mode(False)
    prompts = torch.randn(len(TASKS), 4, bb.hidden_size, generator=torch.Generator().manual_seed(1))  # (T, L, H)
    splits, metrics = [data[t].dev for t in TASKS], [data[t].info.metric for t in TASKS]
    one = evaluate_groups(bb, prompts, splits, metrics, 4, max_examples=5)  # 15 items: 8 + 7 over 2 ranks
    assert len({p for group in one[1] for p in group}) > 1, "all predictions equal: a mix-up could not show"

    world, barrier, slots, got = 2, threading.Barrier(2), [None, None], [None, None]

    def all_gather(rank):
        def gather(local):
            slots[rank] = local
            barrier.wait()
            out = list(slots)
            barrier.wait()
            return out
        return gather

    def run(rank):
        got[rank] = evaluate_groups(bb, prompts, splits, metrics, 4, max_examples=5, rank=rank, world=world,
                                    all_gather=all_gather(rank))

    threads = [threading.Thread(target=run, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got[0] == got[1] == one
