import pytest
import torch

from ipt_dist.config import BackboneConfig
from ipt_dist.modeling.backbone import build_backbone
from ipt_dist.modeling.tiny import TINY_KINDS, save_tiny_backbone

INPUTS = [" [demo] a great movie", " [demo] bad"]
TARGETS = ["positive", "negative"]


def _bb(kind, **kw):
    return build_backbone(BackboneConfig(name_or_path=kind, dropout=False, num_beams=2, max_new_tokens=4, **kw))


@pytest.mark.parametrize("kind", TINY_KINDS)
def test_prompt_gets_gradients_backbone_does_not(kind):
    bb = _bb(kind)
    x, y = bb.tokenize(INPUTS, TARGETS)
    batch = bb.collate_train(x, y)
    prompts = torch.randn(2, 3, bb.hidden_size, requires_grad=True)
    losses, rows = bb.token_losses(prompts, batch)
    assert losses.shape == rows.shape and losses.dtype == torch.float32
    # every target token (and nothing else, prompt and input positions included) has a loss
    assert rows.tolist() == [i for i, t in enumerate(y) for _ in range(len(t))]
    losses.mean().backward()
    assert prompts.grad is not None and prompts.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in bb.model.parameters())


@pytest.mark.parametrize("kind", TINY_KINDS)
def test_batched_generation_uses_each_rows_prompt(kind):
    bb = _bb(kind)
    x, _ = bb.tokenize(INPUTS, TARGETS)
    prompts = torch.randn(2, 3, bb.hidden_size)
    out = bb.generate(prompts, bb.collate_generate(x))
    assert len(out) == 2 and all(isinstance(s, str) for s in out)
    # row-wise: generating row 1 alone with its prompt gives the same text as in the batch
    alone = bb.generate(prompts[1:], bb.collate_generate(x[1:]))
    assert alone[0] == out[1]


def test_decoder_only_prompt_positions_carry_no_loss():
    bb = _bb("tiny-llama")
    x, y = bb.tokenize(INPUTS, TARGETS)
    batch = bb.collate_train(x, y)
    l4, _ = bb.token_losses(torch.zeros(2, 4, bb.hidden_size), batch)
    l9, _ = bb.token_losses(torch.zeros(2, 9, bb.hidden_size), batch)
    assert l4.shape == l9.shape  # prompt length changes nothing in how many tokens are scored


def test_padding_does_not_change_a_rows_loss():
    bb = _bb("tiny-t5")
    x, y = bb.tokenize(INPUTS, TARGETS)
    P = torch.randn(2, 3, bb.hidden_size)
    both, rows = bb.token_losses(P, bb.collate_train(x, y))
    one, _ = bb.token_losses(P[1:], bb.collate_train(x[1:], y[1:]))
    torch.testing.assert_close(both[rows == 1], one, rtol=1e-5, atol=1e-5)


def test_truncation_policy():
    bb = _bb("tiny-t5", max_input_len=5, max_target_len=3)
    x, y = bb.tokenize(["one two three four five six seven eight nine ten"], ["a b c d e f g"])
    assert len(x[0]) == 5 and len(y[0]) == 3 and y[0][-1] == bb.eos_id


def test_answer_prefix_ends_every_decoder_only_input_and_is_never_cut():
    from ipt_dist.config import ConfigError, load_config
    from ipt_dist.modeling.backbone import BackboneError
    from ipt_dist.sweep.jobs import job_context

    plain = _bb("tiny-llama", max_input_len=40)
    sep = _bb("tiny-llama", max_input_len=40, answer_prefix="\nAnswer:")
    suffix = sep.tokenizer("\nAnswer:", add_special_tokens=False)["input_ids"]
    assert suffix
    long = " ".join(["one two three four five six seven eight nine ten"] * 4)
    (x0, x1), y = sep.tokenize([" [demo] bad", long], TARGETS)
    assert x0 == plain.tokenize([" [demo] bad"], TARGETS[:1])[0][0] + suffix
    assert len(x1) == 40 and x1[-len(suffix):] == suffix  # the input is cut, the separator is kept
    assert y == plain.tokenize(INPUTS, TARGETS)[1]  # targets (and so the loss positions) unchanged
    batch = sep.collate_train([x0], y[:1])
    losses, _ = sep.token_losses(torch.zeros(1, 3, sep.hidden_size), batch)
    assert losses.shape[0] == len(y[0])  # the separator is input: no loss on it
    # another input, another job; only when set, so earlier job ids stay valid
    a = load_config(None, ["backbone.name_or_path=tiny-llama"])
    b = load_config(None, ["backbone.name_or_path=tiny-llama", "backbone.answer_prefix=' =>'"])
    assert "answer_prefix" not in job_context(a, "pt") and job_context(b, "pt")["answer_prefix"] == " =>"
    with pytest.raises(ConfigError, match="backbone.answer_prefix.*chat_template"):
        load_config(None, ["backbone.answer_prefix=' =>'", "backbone.chat_template=true"])
    with pytest.raises(BackboneError, match="backbone.answer_prefix: .* encoder-decoder"):
        _bb("tiny-t5", answer_prefix=" =>")


def test_load_local_directory_and_bf16(tmp_path):
    path = save_tiny_backbone("tiny-llama", tmp_path / "m")
    a = _bb("tiny-llama")
    b = build_backbone(BackboneConfig(name_or_path=str(path), dropout=False))
    x, y = a.tokenize(INPUTS, TARGETS)
    assert x == b.tokenize(INPUTS, TARGETS)[0]
    P = torch.randn(2, 3, a.hidden_size)
    torch.testing.assert_close(a.token_losses(P, a.collate_train(x, y))[0], b.token_losses(P, b.collate_train(x, y))[0])
    c = build_backbone(BackboneConfig(name_or_path=str(path), dtype="bfloat16"))
    assert next(c.model.parameters()).dtype == torch.bfloat16
    losses, _ = c.token_losses(P, c.collate_train(x, y))
    assert losses.dtype == torch.float32 and torch.isfinite(losses).all()


def test_missing_model_path_is_a_clear_error(tmp_path):
    from ipt_dist.modeling.backbone import BackboneError

    with pytest.raises(BackboneError, match="backbone.name_or_path.*does not exist"):
        build_backbone(BackboneConfig(name_or_path=str(tmp_path / "no_such_model")))


def test_empty_model_directory_and_unknown_name_say_the_accepted_forms(tmp_path, monkeypatch):
    from ipt_dist.modeling.backbone import BackboneError

    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneError, match="directory without a model.*local model directory"):
        build_backbone(BackboneConfig(name_or_path=str(tmp_path / "empty")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no hub here anyway: the name cannot load
    with pytest.raises(BackboneError, match="cannot load 'tiny_t5'.*HF_HUB_OFFLINE.*did you mean 'tiny-t5'"):
        build_backbone(BackboneConfig(name_or_path="tiny_t5"))


def test_tokenizer_without_pad_uses_eos(tmp_path):
    from transformers import AutoTokenizer

    path = save_tiny_backbone("tiny-gpt2", tmp_path / "g")
    tok = AutoTokenizer.from_pretrained(path)
    tok.pad_token = None
    tok.save_pretrained(path)
    bb = build_backbone(BackboneConfig(name_or_path=str(path)))
    assert bb.pad_id == bb.eos_id


def test_unknown_arch_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_backbone(BackboneConfig(arch="gpt-17"))


def test_float16_without_cuda_is_a_clear_error():
    from ipt_dist.modeling.backbone import BackboneError

    if torch.cuda.is_available():
        pytest.skip("float16 is fine where CUDA is")
    with pytest.raises(BackboneError, match="float16 on a machine without CUDA.*bfloat16"):
        build_backbone(BackboneConfig(name_or_path="tiny-t5", dtype="float16"))


def test_cut_inputs_are_counted_once_per_task(caplog):
    import logging

    from ipt_dist.data.batching import tokenize_tasks
    from ipt_dist.data.tasks import Example, TaskData, TaskInfo

    b = build_backbone(BackboneConfig(name_or_path="tiny-t5", max_input_len=8, max_target_len=4))
    long, short = "w " * 40, "a b"
    ex = [Example(long, ("x " * 10,)), Example(short, ("y",)), Example(long, ("y",))]
    task = TaskData(TaskInfo(name="cutme"), train=ex, dev=ex[:1], test=[])
    with caplog.at_level(logging.INFO, logger="ipt_dist.data.batching"):
        tok = tokenize_tasks({"cutme": task}, b, prefix=False)["cutme"]
    msgs = [r.getMessage() for r in caplog.records if "cutme" in r.getMessage()]
    assert len(msgs) == 1 and "3 of 4 inputs" in msgs[0] and "2 targets" in msgs[0], msgs
    assert max(len(x) for x in tok.train.inputs) == 8


def test_auto_dtype_is_bf16_only_where_it_is_fast(monkeypatch):
    from ipt_dist.config import load_config
    from ipt_dist.modeling import backbone as bmod

    fast, slow = "flags\t\t: fpu sse avx512f avx512_bf16 avx512vl\n", "flags\t\t: fpu sse avx2 avx512f\n"
    assert bmod.resolve_dtype("auto", "cpu", fast)[0] == "bfloat16"
    assert bmod.resolve_dtype("auto", "cpu", "flags\t: amx_bf16 amx_tile\n")[0] == "bfloat16"
    assert bmod.resolve_dtype("auto", "cpu", slow) == ("float32", "CPU without AVX512-bf16 / AMX")
    assert bmod.resolve_dtype("float32", "cpu", fast) == ("float32", "as configured")
    if not torch.cuda.is_available():  # a CPU driver planning GPU work assumes bf16 and says so
        assert bmod.resolve_dtype("auto", "cuda") == ("bfloat16", "CUDA target (assumed Ampere or newer: bf16)")
    cfg = load_config(None, ["backbone.dtype=auto"])
    monkeypatch.setattr(bmod, "_cpu_has_fast_bf16", lambda cpuinfo=None: False)
    assert bmod.resolve_auto_dtype(cfg, "cpu").backbone.dtype == "float32"
    monkeypatch.setattr(bmod, "_cpu_has_fast_bf16", lambda cpuinfo=None: True)
    resolved = bmod.resolve_auto_dtype(cfg, "cpu")
    assert resolved.backbone.dtype == "bfloat16" and cfg.backbone.dtype == "auto"  # a copy
    b = build_backbone(replace_dtype(cfg.backbone, "auto"), "cpu")  # built directly: resolved for its device
    assert next(b.model.parameters()).dtype == torch.bfloat16 and b.cfg.dtype == "bfloat16"


def replace_dtype(bcfg, dtype):
    from dataclasses import replace

    return replace(bcfg, dtype=dtype)


@pytest.mark.parametrize("kind", TINY_KINDS)
def test_name_and_hidden_size_known_without_loading_match_the_loaded_backbone(kind):
    """One backbone_name and one hidden-size rule (modeling.backbone) for the loaded backbone, the
    checks that run before loading (distributed MSF) and what prompt files record (provenance)."""
    from ipt_dist import provenance
    from ipt_dist.modeling.backbone import backbone_name, configured_hidden_size, model_hidden_size

    cfg = BackboneConfig(name_or_path=kind)
    bb = build_backbone(cfg)
    assert backbone_name(cfg) == bb.name == kind and provenance.backbone_name is backbone_name
    assert configured_hidden_size(cfg) == bb.hidden_size == model_hidden_size(bb.model.config) > 0


def test_hidden_size_of_named_shapes_and_unknown_models():
    from types import SimpleNamespace

    from ipt_dist.modeling.backbone import backbone_name, configured_hidden_size, model_hidden_size

    assert backbone_name(BackboneConfig(arch="bart-base")) == "arch:bart-base"
    assert configured_hidden_size(BackboneConfig(arch="bart-base")) == 768
    assert configured_hidden_size(BackboneConfig(name_or_path="SmolLM2-135M-Instruct")) == 576  # no download
    assert configured_hidden_size(BackboneConfig(name_or_path="demo-t5")) == configured_hidden_size(
        BackboneConfig(name_or_path="tiny-t5"))  # a demo backbone before it is pretrained
    assert model_hidden_size(SimpleNamespace(n_embd=48)) == 48 and model_hidden_size(SimpleNamespace()) is None


def test_compile_wraps_the_training_forward_only():
    """backbone.compile wraps what token_losses runs (the whole encoder-decoder; a decoder-only
    model's body without the LM head) and leaves the model itself (generation) eager."""
    t5, llama = _bb("tiny-t5", compile=True), _bb("tiny-llama", compile=True)
    assert isinstance(t5.train_forward(), torch._dynamo.eval_frame.OptimizedModule)
    assert t5.train_forward()._orig_mod is t5.model
    assert llama.train_forward()._orig_mod is getattr(llama.model, llama.model.base_model_prefix)
    assert not isinstance(t5.model, torch._dynamo.eval_frame.OptimizedModule)
    assert _bb("tiny-t5").train_forward() is not None and _bb("tiny-t5").cfg.compile is False


@pytest.mark.slow
@pytest.mark.heavy  # ~80 s of compiling on 2 cores; test_compile_wraps_the_training_forward_only stays in CI
@pytest.mark.parametrize("kind", ["tiny-llama"])  # the decoder-only body path (SmolLM2's); ~80 s of compiling
def test_compiled_training_forward_matches_eager(kind):
    """backbone.compile: token losses and prompt gradients equal the eager ones, over two batch
    shapes (dynamic shapes: the second shape must not need a different answer)."""
    eager, compiled = _bb(kind), _bb(kind, compile=True)
    compiled.model.load_state_dict(eager.model.state_dict())  # the same weights
    for inputs, targets in [(INPUTS, TARGETS), (INPUTS + [" [demo] a long and slow but fine film"],
                                                TARGETS + ["positive"])]:
        x, y = eager.tokenize(inputs, targets)
        batch = eager.collate_train(x, y)
        grads, out = [], []
        for bb in (eager, compiled):
            prompts = torch.randn(len(x), 3, bb.hidden_size, generator=torch.Generator().manual_seed(0))
            prompts.requires_grad_(True)
            losses, rows = bb.token_losses(prompts, batch)
            losses.sum().backward()
            out.append((losses.detach(), rows))
            grads.append(prompts.grad)
        assert torch.equal(out[0][1], out[1][1])
        assert torch.allclose(out[0][0], out[1][0], atol=1e-5), (out[0][0] - out[1][0]).abs().max()
        assert torch.allclose(grads[0], grads[1], atol=1e-5), (grads[0] - grads[1]).abs().max()
