"""PEFT PromptTuning adapters in and out (`ipt export-peft`, adapters read as stage-0 prompts).

The PEFT peer checks need `peft` (the `[test]` extra); the format and error checks do not.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from ipt_dist.artifacts import (
    ArtifactError,
    append_jsonl,
    find_prompt,
    load_decoder,
    load_prompt,
    load_task_prompts,
    prompt_path,
    save_msf_checkpoint,
    save_prompt,
)
from ipt_dist.cli import main
from ipt_dist.modeling.autoencoder import PromptAutoencoder
from ipt_dist.peft_io import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    EXPORT_INFO,
    TENSOR_NAME,
    adapter_config,
    export_peft,
    read_adapter,
    write_adapter,
)

L, H, TASK = 4, 64, "demo_sentiment"
INPUTS = [" [demo] a great movie", " [demo] bad plot about the river", " [demo] the food", " [demo] sad"]
KINDS = {"tiny-t5": "SEQ_2_SEQ_LM", "tiny-llama": "CAUSAL_LM"}


def _base_dir(root: Path, kind: str) -> Path:
    """A tiny checkpoint whose greedy output depends on the prompt: the default init (std 0.02)
    makes tiny-llama echo its last input token whatever the prompt, so init wider (same shapes)."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from ipt_dist.modeling.tiny import build_tiny_tokenizer, tiny_config

    out = root / kind
    if not (out / "config.json").is_file():
        tok = build_tiny_tokenizer()
        config = tiny_config(kind, len(tok))
        config.initializer_range, config.initializer_factor = 0.2, 1.0
        cls = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        torch.manual_seed(0)
        cls.from_config(config).save_pretrained(str(out))
        tok.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    return {kind: _base_dir(root, kind) for kind in KINDS}


def _prompt(seed: int = 1, scale: float = 0.5) -> torch.Tensor:
    return torch.randn(L, H, generator=torch.Generator().manual_seed(seed)) * scale  # (L, H)


def _stage0_run(root: Path, backbone: str, prompt: torch.Tensor) -> Path:
    run = root / "run"
    save_prompt(prompt_path(run / "prompts", TASK), prompt, backbone=backbone, task=TASK, metric="acc",
                dev_score=0.75, test_score=0.5, lr=0.3, seed=13)
    return run


# ------------------------------------------------------------------ export -> PEFT loads it, same output


@pytest.mark.parametrize("kind", list(KINDS))
def test_exported_adapter_matches_peft_files_and_generates_like_ours(kind, bases, tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from ipt_dist.config import BackboneConfig
    from ipt_dist.modeling.backbone import build_backbone

    base = bases[kind]
    cls = AutoModelForSeq2SeqLM if kind == "tiny-t5" else AutoModelForCausalLM
    prompt = _prompt()
    run = _stage0_run(tmp_path, str(base), prompt)
    out = tmp_path / "adapter"
    info = export_peft(run, TASK, out)
    assert info["source"] == "stage0" and info["task_type"] == KINDS[kind] and info["dev_score"] == 0.75
    assert sorted(p.name for p in out.iterdir()) == sorted([ADAPTER_CONFIG, ADAPTER_WEIGHTS, EXPORT_INFO])

    # The files equal what PEFT itself writes for a PromptTuning model of this base.
    real = tmp_path / "real"
    pcfg = peft.PromptTuningConfig(task_type=KINDS[kind], num_virtual_tokens=L, num_transformer_submodules=1)
    peft.get_peft_model(cls.from_pretrained(str(base)), pcfg).save_pretrained(str(real))
    ours_cfg, real_cfg = (json.loads((d / ADAPTER_CONFIG).read_text()) for d in (out, real))
    real_cfg["peft_version"] = ours_cfg["peft_version"]  # the release the format was checked against
    assert ours_cfg == real_cfg
    with safe_open(str(out / ADAPTER_WEIGHTS), "pt") as a, safe_open(str(real / ADAPTER_WEIGHTS), "pt") as b:
        assert a.metadata() == b.metadata()
        assert list(a.keys()) == list(b.keys()) == [TENSOR_NAME]
        ta, tb = a.get_tensor(TENSOR_NAME), b.get_tensor(TENSOR_NAME)
        assert (ta.shape, ta.dtype) == (tb.shape, tb.dtype) == ((L, H), torch.float32)
        assert torch.equal(ta, prompt)

    # PEFT loads it; greedy generation equals ours token for token (dropout off, eval mode).
    ours = build_backbone(BackboneConfig(name_or_path=str(base), dropout=False, num_beams=1, max_new_tokens=8))
    pmodel = peft.PeftModel.from_pretrained(cls.from_pretrained(str(base)), str(out)).eval()
    assert torch.equal(pmodel.prompt_encoder["default"].embedding.weight.detach(), prompt)
    ids, _ = ours.tokenize(INPUTS, ["x"] * len(INPUTS))
    batch = ours.collate_generate(ids)  # padded: right for T5, left for LLaMA
    B = len(INPUTS)
    mine = ours.generate_ids(prompt.expand(B, L, H), batch)
    greedy = {"max_new_tokens": 8, "num_beams": 1, "do_sample": False, "pad_token_id": ours.pad_id,
              "eos_token_id": ours.eos_id}
    if kind == "tiny-t5":
        theirs = pmodel.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **greedy)
    else:
        # Decoder-only, peft 0.21.2 + transformers 5: PeftModel.generate with its KV cache drifts from
        # the PEFT model's own forward after the first new token, and it ignores position ids (left
        # padding shifts the input). One example at a time without the cache is PEFT's greedy decode.
        rows = [pmodel.generate(input_ids=torch.tensor([x]), attention_mask=torch.ones(1, len(x), dtype=torch.long),
                                use_cache=False, **greedy)
                for x in ids]  # unpadded, one at a time
        theirs = torch.cat([r[:, len(x):] for r, x in zip(rows, ids)])  # PEFT returns input + new tokens
    assert torch.equal(mine, theirs), (mine, theirs)
    # The check can fail: another prompt changes the output.
    assert not torch.equal(mine, ours.generate_ids(_prompt(seed=2).expand(B, L, H), batch))


# ------------------------------------------------------------------ export -> read back


@pytest.fixture
def exported(tmp_path) -> tuple[Path, torch.Tensor]:
    prompt = _prompt()
    run = _stage0_run(tmp_path, "tiny-t5", prompt)
    out = tmp_path / "adapter"
    export_peft(run, TASK, out)
    return out, prompt


def test_export_then_read_back_gives_the_identical_prompt(exported, tmp_path):
    out, prompt = exported
    p, meta = load_prompt(out)
    assert torch.equal(p, prompt) and p.dtype == torch.float32
    assert meta["backbone"] == "tiny-t5" and meta["task"] == TASK and meta["task_type"] == "SEQ_2_SEQ_LM"
    # As a stage-0 prompt in a prompts directory: <prompts_dir>/<task>/ instead of <task>.safetensors.
    pdir = tmp_path / "imported"
    pdir.mkdir()
    out.rename(pdir / TASK)
    assert find_prompt(pdir, TASK) == pdir / TASK
    assert torch.equal(load_task_prompts(pdir, [TASK], L, H, backbone="tiny-t5")[0], prompt)
    save_prompt(prompt_path(pdir, TASK), prompt, backbone="tiny-t5")  # both: an error naming both
    with pytest.raises(ArtifactError, match="two stage-0 prompts") as e:
        load_task_prompts(pdir, [TASK], L, H)
    assert str(prompt_path(pdir, TASK)) in str(e.value) and str(pdir / TASK) in str(e.value)


def _tamper(adapter: Path, **changes) -> Path:
    cfg = json.loads((adapter / ADAPTER_CONFIG).read_text())
    cfg.update(changes)
    (adapter / ADAPTER_CONFIG).write_text(json.dumps(cfg))
    return adapter


@pytest.mark.parametrize("changes, match", [
    ({"peft_type": "LORA"}, "only PROMPT_TUNING"),
    ({"num_transformer_submodules": 2}, "num_transformer_submodules is 2"),
    ({"num_transformer_submodules": None}, "num_transformer_submodules is 2"),  # PEFT's seq2seq default
    ({"num_virtual_tokens": L + 1}, "num_virtual_tokens=5, token_dim=64"),
    ({"token_dim": H * 2}, "num_virtual_tokens=4, token_dim=128"),
])
def test_unusable_adapters_are_refused(exported, changes, match):
    with pytest.raises(ArtifactError, match=match):
        load_prompt(_tamper(exported[0], **changes))


def test_adapter_of_another_shape_or_backbone_is_refused_with_the_run(exported, tmp_path):
    out, _ = exported
    pdir = tmp_path / "prompts_in"
    pdir.mkdir()
    out.rename(pdir / TASK)
    with pytest.raises(ArtifactError, match=r"prompt shape \(4, 64\) does not match .*L=8, H=64"):
        load_task_prompts(pdir, [TASK], 8, H, backbone="tiny-t5")
    with pytest.raises(ArtifactError, match="base_model_name_or_path.*not 'tiny-llama'"):
        load_task_prompts(pdir, [TASK], L, H, backbone="tiny-llama")


def test_pickle_only_or_missing_weights_are_refused(exported):
    out, _ = exported
    (out / ADAPTER_WEIGHTS).rename(out / "adapter_model.bin")
    with pytest.raises(ArtifactError, match="safe_serialization=True"):
        read_adapter(out)


def test_export_never_overwrites(exported, tmp_path):
    out, _ = exported
    run = tmp_path / "run"
    before = (out / ADAPTER_WEIGHTS).read_bytes()
    with pytest.raises(ArtifactError, match="not empty; export never overwrites"):
        export_peft(run, TASK, out)
    assert (out / ADAPTER_WEIGHTS).read_bytes() == before
    empty = tmp_path / "empty"
    empty.mkdir()
    export_peft(run, TASK, empty)  # an empty directory is fine
    assert (empty / ADAPTER_CONFIG).is_file()
    cfg = adapter_config(L, H, encoder_decoder=True, base_model="tiny-t5")
    with pytest.raises(ArtifactError, match="is a file"):
        write_adapter(out / ADAPTER_CONFIG, _prompt(), cfg, {})


# ------------------------------------------------------------------ --d: Dec(z*) of the best IST job


def _ist_run(root: Path, d: int = 4, layout: str = "sweep") -> tuple[Path, dict[str, torch.Tensor]]:
    """A minimal IST output through the real writers: MSF checkpoint, z files, results, config.
    `layout`: "sweep" (ist_sweep/) or "single" (`ipt ist`: ist/, z/, the MSF checkpoint in RUN_DIR/msf)."""
    run = root / "run"
    ckpt = run / "msf" if layout == "single" else run / f"msf_d{d}" / "msf"
    torch.manual_seed(0)
    ae = PromptAutoencoder(d, L, H, mid_dim=16)
    save_msf_checkpoint(ckpt, ae, {"backbone": "tiny-t5"})
    sdir = run / ("ist" if layout == "single" else "ist_sweep")
    zdir = sdir / ("z" if layout == "single" else "params")
    zdir.mkdir(parents=True)
    zs = {}
    rows = [  # (job_id, task, role, decoder, lr, best_dev)
        ("ist-a", TASK, "ist", "msf", 0.1, 0.50),
        ("ist-b", TASK, "ist", "msf", 0.3, 0.80),  # the best dev with the MSF decoder at d
        ("ist-c", TASK, "ist", "random", 0.3, 0.95),  # random decoder: never exported
        ("msf-e", TASK, "msf_eval", "msf", None, 0.99),  # setting 1: not an IST job
        ("ist-f", "demo_topic", "ist", "msf", 0.3, 0.70),
    ]
    for job_id, task, role, decoder, lr, dev in rows:
        zs[job_id] = torch.randn(d)
        save_file({"z": zs[job_id]}, str(zdir / f"{job_id}.safetensors"))
        rec = {"job_id": job_id, "task": task, "kind": "msf_eval" if role == "msf_eval" else "ist",
               "decoder": decoder, "d": d, "lr": lr, "data_seed": 13, "seen": True, "metric": "acc",
               "best_dev": dev, "test": dev - 0.1}
        if layout == "sweep":
            rec.update(role=role, setting="ist_seen_same", backbone="tiny-t5",
                       param_file=f"params/{job_id}.safetensors")
        append_jsonl(sdir / "results.jsonl", rec)
    if layout == "sweep":
        saved = {"output_dir": str(run), "backbone": {"name_or_path": "tiny-t5"}, "sweep": {"dims": {d: str(ckpt)}}}
        (sdir / "config.yaml").write_text(yaml.safe_dump(saved))
    else:
        (run / "ist_config.yaml").write_text(yaml.safe_dump({"backbone": {"name_or_path": "tiny-t5"}}))
    return run, zs


@pytest.mark.parametrize("layout", ["sweep", "single"])
def test_export_ist_prompt_is_dec_of_the_best_z(tmp_path, layout):
    run, zs = _ist_run(tmp_path, layout=layout)
    out = tmp_path / "adapter_d4"
    info = export_peft(run, TASK, out, d=4)
    assert info["job_id"] == "ist-b" and info["candidates"] == 2 and info["dev_score"] == 0.8
    decoder, _ = load_decoder(run / "msf" if layout == "single" else run / "msf_d4" / "msf")
    with torch.no_grad():
        want = decoder(zs["ist-b"].view(1, -1))[0]  # (L, H)
    p, meta = load_prompt(out)
    assert torch.equal(p, want)
    assert json.loads((out / EXPORT_INFO).read_text())["job_id"] == "ist-b" and meta["d"] == 4
    cfg = json.loads((out / ADAPTER_CONFIG).read_text())
    assert (cfg["task_type"], cfg["num_virtual_tokens"], cfg["token_dim"]) == ("SEQ_2_SEQ_LM", L, H)


def test_export_ist_errors_say_what_exists(tmp_path):
    run, _ = _ist_run(tmp_path)
    with pytest.raises(ArtifactError, match=r"at d=8 .*intrinsic dimensions there: \[4\]"):
        export_peft(run, TASK, tmp_path / "a", d=8)
    with pytest.raises(ArtifactError, match=r"no IST result for task 'nope'.*\['demo_sentiment', 'demo_topic'\]"):
        export_peft(run, "nope", tmp_path / "b", d=4)
    with pytest.raises(ArtifactError, match="no stage-0 prompt for task 'demo_topic'"):
        export_peft(run, "demo_topic", tmp_path / "c")
    assert not any((tmp_path / n).exists() for n in "abc")


def test_cli_export_peft_prints_the_choice_and_errors_in_one_line(tmp_path, capsys):
    run, _ = _ist_run(tmp_path)
    out = tmp_path / "adapter"
    assert main(["export-peft", str(run), "--task", TASK, "--d", "4", str(out)]) == 0
    printed = capsys.readouterr().out
    assert '"job_id": "ist-b"' in printed and str(out) in printed
    assert main(["export-peft", str(run), "--task", TASK, "--d", "4", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "never overwrites" in err[0]


def test_backbone_comes_from_the_run_config_when_the_prompt_does_not_record_it(tmp_path):
    run = tmp_path / "run"
    (run / "pt_config.yaml").parent.mkdir(parents=True)
    (run / "pt_config.yaml").write_text(yaml.safe_dump({"backbone": {"name_or_path": "x", "arch": "t5-base"}}))
    save_prompt(prompt_path(run / "prompts", TASK), torch.zeros(L, 768))  # no backbone in its metadata
    export_peft(run, TASK, tmp_path / "a")
    cfg = json.loads((tmp_path / "a" / ADAPTER_CONFIG).read_text())
    assert (cfg["base_model_name_or_path"], cfg["task_type"], cfg["num_layers"], cfg["num_attention_heads"]) == (
        "arch:t5-base", "SEQ_2_SEQ_LM", 12, 12)
    save_prompt(prompt_path(run / "prompts", "small"), torch.zeros(L, H))
    with pytest.raises(ArtifactError, match="hidden size 64, the backbone 'arch:t5-base' has 768"):
        export_peft(run, "small", tmp_path / "b")
