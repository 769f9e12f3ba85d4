"""Each stage learns; only the intended parameters train."""

import pytest
import torch

from ipt_dist.config import load_config
from ipt_dist.data.sampling import TaskBalancedSampler
from ipt_dist.modeling.autoencoder import PromptAutoencoder
from ipt_dist.modeling.backbone import build_backbone
from ipt_dist.stages.common import load_tokenized
from ipt_dist.stages.msf import collate_msf
from ipt_dist.train.optim import BatchedAdamW
from ipt_dist.train.packed import Job, PackSettings, train_pack
from ipt_dist.train.steps import MSFModel, ist_step, msf_step, pt_step
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


def test_ist_trains_exactly_d_parameters_and_lowers_loss(setup):
    _, bb, data = setup
    batch = _packed_batch(bb, data)
    # A decoder that spans useful prompts, as MSF would give: PT prompts of the 3 tasks,
    # memorised by the autoencoder (reconstruction only, no backbone).
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
    decoder = ae.decoder.requires_grad_(False)
    z = (torch.randn(1, 4) * 0.02).requires_grad_(True)
    trainable = [p for p in [z, *decoder.parameters(), *bb.model.parameters()] if p.requires_grad]
    assert sum(p.numel() for p in trainable) == 4  # exactly d free parameters
    one_task = {k: v[batch["group"] == 0] for k, v in batch.items()}
    one_task["group"].zero_()
    opt = BatchedAdamW(z, [0.1], [1.0])
    losses = [ist_step(bb, decoder, z, opt, one_task, 1.0) for _ in range(30)]
    assert losses[-1] < losses[0] - 0.3, (losses[0], losses[-1])
    assert all(p.grad is None for p in decoder.parameters())


def test_msf_step_lowers_loss_and_only_the_autoencoder_trains(setup):
    cfg, bb, data = setup
    torch.manual_seed(0)
    prompts = torch.randn(3, 4, bb.hidden_size) * 0.5
    ae = PromptAutoencoder(d=4, prompt_len=4, hidden=bb.hidden_size, mid_dim=32)
    model = MSFModel(bb, ae, prompts, alpha=1.0)
    opt = torch.optim.AdamW(ae.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    sampler = TaskBalancedSampler([len(data[t].train) for t in TASKS], 12, seed=0)
    tok = [data[t] for t in TASKS]
    first = msf_step(model, opt, sched, collate_msf(bb, tok, sampler.global_batch_at(0)), 1.0)
    for _ in range(40):
        last = msf_step(model, opt, sched, collate_msf(bb, tok, sampler.global_batch_at(0)), 1.0)
    assert last["loss"] < first["loss"] - 0.5
    assert last["rec_loss"] < first["rec_loss"]
    assert all(p.grad is None for p in bb.model.parameters())
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.named_parameters() if n.startswith("autoencoder.")}


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
    _, bb, data = setup
    jobs = [Job("a", TASKS[0], "pt"), Job("b", TASKS[1], "ist")]
    with pytest.raises(ValueError, match="one kind"):
        train_pack(bb, jobs, {}, PackSettings(), prompt_len=4)
    with pytest.raises(ValueError, match="has no data"):
        train_pack(bb, jobs[:1], {}, PackSettings(), prompt_len=4)
