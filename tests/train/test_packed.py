"""Packed training (train_pack with K jobs) equals K separate runs with the same seeds.

Pure torch, no Ray: the equivalence the sweep relies on when it packs many jobs into one Ray
task. Dropout is off (the only source of randomness that depends on the batch composition);
label smoothing is on, as in the reference.
"""

from __future__ import annotations

import pytest
import torch

from ipt_dist.config import load_config
from ipt_dist.modeling.autoencoder import random_decoder
from ipt_dist.modeling.backbone import build_backbone
from ipt_dist.stages.common import load_tokenized
from ipt_dist.train import rows as rows_mod
from ipt_dist.train.packed import Job, PackSettings, init_params, settings_init_params, train_pack
from ipt_dist.train.rows import PaddedRows
from ipt_dist.train.steps import target_token_counts
from tests.conftest import tiny_overrides

SETTINGS = PackSettings(steps=6, batch_size=3, warmup_ratio=0.2, eval_every=3, eval_batch_size=16)


@pytest.fixture(scope="module")
def setups(tmp_path_factory, demo_dir):
    """(backbone name, dtype) -> (backbone, {data seed: tokenized tasks}), built once per module."""
    built = {}

    def get(backbone: str, dtype: str = "float32"):
        if (backbone, dtype) not in built:
            out = tmp_path_factory.mktemp("packed")
            cfg = load_config(None, tiny_overrides(out, demo_dir, backbone) + [
                "backbone.label_smoothing=0.1", "backbone.dropout=false", "backbone.max_new_tokens=4",
                "data.max_examples=8", "data.train_size=6", "data.data_seed=42", f"backbone.dtype={dtype}"])
            bb = build_backbone(cfg.backbone, "cpu")
            tasks = ["demo_sentiment", "demo_topic", "demo_copy_first"]
            # Two few-shot draws of the same tasks: jobs of one pack may train on different data.
            built[(backbone, dtype)] = bb, {seed: load_tokenized(cfg, bb, tasks, data_seed=seed) for seed in (42, 13)}
        return built[(backbone, dtype)]

    return get


@pytest.fixture
def setup(setups):
    return setups("tiny-t5")


# An encoder-decoder (prompt on the encoder side) and a decoder-only LM (prompt before the input,
# its positions without loss): packing must not change either.
BACKBONES = ["tiny-t5", "tiny-llama"]


def pack_jobs(kind: str) -> list[tuple[Job, int]]:
    """(job, data seed): different tasks, lrs, seeds, clips, and one task twice with other data."""
    return [
        (Job("a", "demo_sentiment", kind, lr=0.3, seed=1, grad_clip=1.0), 42),
        (Job("b", "demo_topic", kind, lr=0.05, seed=2, grad_clip=0.0), 42),
        (Job("c", "demo_copy_first", kind, lr=0.1, seed=3, grad_clip=0.05), 42),
        (Job("d", "demo_sentiment", kind, lr=0.1, seed=4, grad_clip=1.0), 13),
    ]


def run(bb, draws, jobs, **kw):
    data = {j.job_id: draws[seed][j.task] for j, seed in jobs}
    return train_pack(bb, [j for j, _ in jobs], data, kw.pop("settings", SETTINGS), **kw)


def assert_same(packed, separate, atol=1e-5, param_atol=None):
    for p, s in zip(packed, separate):
        assert p.job.job_id == s.job.job_id
        assert [st for st, _ in p.loss_curve] == [st for st, _ in s.loss_curve] == [3, 6]
        assert [v for _, v in p.loss_curve] == pytest.approx([v for _, v in s.loss_curve], abs=atol)
        assert p.dev_curve == s.dev_curve
        assert (p.best_dev, p.best_step, p.test) == (s.best_dev, s.best_step, s.test)
        assert p.best_param.dtype == torch.float32  # trainable state stays fp32 whatever the backbone's dtype
        assert torch.allclose(p.best_param, s.best_param, atol=param_atol or atol), \
            (p.best_param - s.best_param).abs().max()


def assert_jobs_differ(results):
    """Guard against a vacuous pass: the jobs really trained to different parameters."""
    for i in range(len(results)):
        for k in range(i + 1, len(results)):
            assert not torch.allclose(results[i].best_param, results[k].best_param, atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", BACKBONES)
def test_packed_pt_equals_separate_runs(setups, backbone):
    bb, draws = setups(backbone)
    assert bb.model.config.is_encoder_decoder == (backbone == "tiny-t5")
    jobs = pack_jobs("pt")
    packed = run(bb, draws, jobs, prompt_len=4)
    separate = [run(bb, draws, [js], prompt_len=4)[0] for js in jobs]
    assert_same(packed, separate)
    assert_jobs_differ(packed)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", BACKBONES)
def test_packed_ist_equals_separate_runs(setups, backbone):
    bb, draws = setups(backbone)
    dec = random_decoder(d=5, prompt_len=4, hidden=bb.hidden_size, mid_dim=16, seed=0)
    jobs = pack_jobs("ist")
    packed = run(bb, draws, jobs, decoder=dec)
    separate = [run(bb, draws, [js], decoder=dec)[0] for js in jobs]
    assert_same(packed, separate)
    assert_jobs_differ(packed)
    assert packed[0].best_param.shape == (5,)


@pytest.mark.slow
def test_packed_pt_from_given_initial_prompts_equals_separate_runs(setup):
    """The IPT-initialised PT path (init=Dec(z*) rows), mixed with plain seeded rows as the sweep does."""
    bb, draws = setup
    dec = random_decoder(d=5, prompt_len=4, hidden=bb.hidden_size, mid_dim=16, seed=0)
    jobs = pack_jobs("pt")[:3]
    z = torch.randn(2, 5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        rows = list(dec(z))  # (2, L, H): Dec(z*) for jobs a, b
    rows.append(init_params([jobs[2][0]], (4, bb.hidden_size), SETTINGS.init_std)[0])  # job c: plain PT
    init = torch.stack(rows)  # (K, L, H)
    packed = run(bb, draws, jobs, prompt_len=4, init=init)
    separate = [run(bb, draws, [js], prompt_len=4, init=init[k : k + 1])[0] for k, js in enumerate(jobs)]
    assert_same(packed, separate)
    plain = run(bb, draws, jobs[2:], prompt_len=4)  # no init given: the same seeded N(0, std) start
    assert torch.allclose(plain[0].best_param, packed[2].best_param, atol=1e-5)


@pytest.mark.slow
def test_forward_chunks_do_not_change_the_result(setup):
    """max_rows splits the packed batch into forward chunks; the gradients (and results) are the same."""
    bb, draws = setup
    jobs = pack_jobs("pt")
    whole = run(bb, draws, jobs, prompt_len=4)
    chunked = run(bb, draws, jobs, prompt_len=4,
                  settings=PackSettings(**{**SETTINGS.__dict__, "max_rows": 5}))
    assert_same(whole, chunked)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_padded_rows_gather_equals_collating_the_same_rows(setups, backbone, monkeypatch):
    """The pool padded once, gathered by index in length buckets, gives exactly the tensors the
    per-step collation gave for the same rows, with less padding when lengths differ."""
    monkeypatch.setattr(rows_mod, "MIN_BUCKET_POSITIONS", 0)  # the demo rows are short: let them bucket
    bb, draws = setups(backbone)
    splits = [draws[42][t].train for t in ("demo_sentiment", "demo_topic", "demo_copy_first")] + [
        draws[13]["demo_sentiment"].train]
    pool = PaddedRows(bb, splits + splits[:1])  # a split given twice is stored once
    assert pool.tensors["input_ids"].shape[0] == sum(len(s) for s in splits)
    g = torch.Generator().manual_seed(0)
    picks = [(k, int(i)) for k in range(4) for i in torch.randint(0, len(splits[k]), (12,), generator=g)]
    rows = [pool.row(splits[k], i) for k, i in picks]
    groups = [k for k, _ in picks]
    one = pool.gather(rows, groups, 4, buckets=1)
    assert len(pool.gather(rows, groups, 4, buckets=4).chunks) > 1  # cut by length alone
    many = pool.gather(rows, groups, 4, buckets=4, max_rows=7)
    assert len(one.chunks) == 1 and len(many.chunks) > len(one.chunks)
    assert all(c["input_ids"].shape[0] <= 7 for c in many.chunks)
    assert many.tokens == one.tokens and many.padded_tokens < one.padded_tokens
    whole = bb.collate_train([splits[k].inputs[i] for k, i in picks], [splits[k].targets[i] for k, i in picks])
    whole["group"] = torch.tensor(groups)
    assert torch.equal(many.counts, target_token_counts(whole, 4)) and torch.equal(one.counts, many.counts)
    # every chunk is what collate_train makes of its own rows (each padded to its own longest row),
    # and the chunks hold exactly the picked rows with their jobs
    seen = []
    for c in many.chunks:
        pairs = [_row_content(bb, c, j) for j in range(c["input_ids"].shape[0])]
        ref = bb.collate_train([x for x, _ in pairs], [t for _, t in pairs])
        for name in ref:
            assert torch.equal(c[name], ref[name]), name
        seen += [(tuple(x), tuple(t), int(gr)) for (x, t), gr in zip(pairs, c["group"])]
    picked = [(tuple(splits[k].inputs[i]), tuple(splits[k].targets[i]), k) for k, i in picks]
    assert sorted(seen) == sorted(picked)
    # the target positions a chunk carries (host-computed, so token_losses need not read the device)
    # give exactly the losses and rows that reading the labels gives
    for c in many.chunks:
        prompts = torch.randn(c["input_ids"].shape[0], 3, bb.hidden_size, generator=torch.Generator().manual_seed(1))
        given = bb.token_losses(prompts, c)
        read = bb.token_losses(prompts, {k: v for k, v in c.items() if not k.startswith("target_")})
        assert torch.equal(given[1], read[1]) and torch.allclose(given[0], read[0], atol=1e-6)


def _row_content(bb, chunk, j) -> tuple[list[int], list[int]]:
    """(input ids, target ids) of row j of a collated chunk."""
    tgt = chunk["labels"][j][chunk["labels"][j] != -100].tolist()
    seq = chunk["input_ids"][j][chunk["attention_mask"][j] == 1].tolist()
    return (seq, tgt) if bb.is_encoder_decoder else (seq[: len(seq) - len(tgt)], tgt)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", BACKBONES)
def test_length_buckets_do_not_change_the_result(setups, backbone, monkeypatch):
    """48 rows of mixed-length tasks a step: cut into length buckets (several forwards, each padded
    to its own longest row) they train to the same results as one forward over all rows."""
    monkeypatch.setattr(rows_mod, "MIN_BUCKET_POSITIONS", 0)  # the demo rows are short: let them bucket
    bb, draws = setups(backbone)
    jobs = pack_jobs("pt")
    settings = PackSettings(**{**SETTINGS.__dict__, "batch_size": 12, "length_buckets": 1})
    whole = run(bb, draws, jobs, prompt_len=4, settings=settings)
    bucketed = run(bb, draws, jobs, prompt_len=4, settings=PackSettings(**{**settings.__dict__, "length_buckets": 4}))
    assert_same(whole, bucketed)
    assert_jobs_differ(bucketed)
    # not vacuous: rows like a step's (12 per job) really are cut into several buckets ...
    splits = [draws[seed][j.task].train for j, seed in jobs]
    pool = PaddedRows(bb, splits)
    rows, groups = [pool.row(sp, i % len(sp)) for sp in splits for i in range(12)], [r // 12 for r in range(48)]
    step = pool.gather(rows, groups, 4, buckets=4)
    assert len(step.chunks) > 1 and step.padded_tokens < pool.gather(rows, groups, 4, buckets=1).padded_tokens
    # ... and by default rows this short stay in one forward (too few positions for a bucket to pay)
    monkeypatch.undo()
    assert len(pool.gather(rows, groups, 4, buckets=4).chunks) == 1


def test_vocab_init_starts_each_prompt_from_embeddings_of_sampled_tokens(setup):
    """pt.init=vocab: each prompt row is the embedding of a token among the first init_vocab_top ids,
    drawn from the job's own seed (so packing does not change it); IST z ignores it."""
    bb, draws = setup
    emb = bb.model.get_input_embeddings().weight.detach()
    jobs = [j for j, _ in pack_jobs("pt")]
    settings = PackSettings(**{**SETTINGS.__dict__, "init": "vocab", "init_vocab_top": 20})
    p = settings_init_params(bb, jobs, (4, bb.hidden_size), settings, "pt")
    assert p.shape == (4, 4, bb.hidden_size)
    for row in p.reshape(-1, bb.hidden_size):
        assert (emb[:20] - row).abs().amax(dim=-1).min() == 0  # exactly one of the first 20 embeddings
    alone = settings_init_params(bb, jobs[1:2], (4, bb.hidden_size), settings, "pt")
    assert torch.equal(alone[0], p[1])
    z = settings_init_params(bb, jobs, (5,), settings, "ist")
    assert torch.equal(z, init_params(jobs, (5,), settings.init_std))
    with pytest.raises(ValueError, match="vocab init needs a prompt shape"):
        init_params(jobs, (5,), 0.02, embedding=emb)
    # and train_pack starts from it: step 0 of a 0-lr job keeps the vocab rows
    frozen = [Job("z", "demo_sentiment", "pt", lr=1e-12, seed=1, grad_clip=1.0)]
    res = train_pack(bb, frozen, {"z": draws[42]["demo_sentiment"]}, settings, prompt_len=4)
    start = settings_init_params(bb, frozen, (4, bb.hidden_size), settings, "pt")[0]
    assert torch.allclose(res[0].best_param, start, atol=1e-6)


# bf16 backbone: a pack's rows share matmuls, so its rounding differs from a job run alone.
# Measured on tiny-t5 / tiny-llama (4 jobs, 6 steps): losses within 2.1e-3 (of ~6), dev and test
# identical, prompts within 0.089 of a 0.47 scale (lr 0.3, Adam's first steps amplify sign
# differences of near-zero gradients), z within 5.5e-3.
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pt", "ist"])
def test_packed_equals_separate_with_a_bf16_backbone(setups, kind):
    bb, draws = setups("tiny-t5", "bfloat16")
    assert next(bb.model.parameters()).dtype == torch.bfloat16
    jobs = pack_jobs(kind)
    kw = {"prompt_len": 4} if kind == "pt" else {
        "decoder": random_decoder(d=5, prompt_len=4, hidden=bb.hidden_size, mid_dim=16, seed=0)}
    packed = run(bb, draws, jobs, **kw)
    separate = [run(bb, draws, [js], **kw)[0] for js in jobs]
    assert_same(packed, separate, atol=1e-2, param_atol=0.2 if kind == "pt" else 0.02)
    assert_jobs_differ(packed)


def test_train_pack_reports_steps_done_and_total_after_every_step(setup):
    """on_progress(done, total) after each training step, the last one (total, total): what a sweep
    worker forwards (throttled) to the driver's heartbeat. No callback, no change."""
    bb, draws = setup
    jobs = pack_jobs("pt")[:2]
    calls = []
    with_cb = run(bb, draws, jobs, prompt_len=4, on_progress=lambda done, total: calls.append((done, total)))
    assert calls == [(step, SETTINGS.steps) for step in range(1, SETTINGS.steps + 1)]
    without = run(bb, draws, jobs, prompt_len=4)
    assert [r.best_dev for r in with_cb] == [r.best_dev for r in without]
