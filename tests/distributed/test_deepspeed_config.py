"""DeepSpeed JSON configs: "auto" filled from our config, the batch invariant, clear rejections."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ipt_dist.config import load_config
from ipt_dist.distributed.deepspeed_config import (
    DeepSpeedConfigError,
    batch_sizes,
    build_ds_config,
    load_ds_config,
    resolve_ds_config,
    shipped_ds_configs,
    zero_stage,
)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ["zero0.json", "zero1.json", "zero2.json", "zero3.json", "zero3_offload.json"]


def cfg_with(*overrides: str):
    return load_config(ROOT / "configs" / "msf_smoke.yaml", list(overrides))


def no_autos(node) -> bool:
    if node == "auto":
        return False
    if isinstance(node, dict):
        return all(no_autos(v) for v in node.values())
    return True


def test_the_five_configs_ship():
    assert [p.name for p in shipped_ds_configs()] == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_is_resolved_from_our_config(name):
    cfg = cfg_with(f"distributed.ds_config=ds_configs/{name}", "msf.batch_size=16",
                   "distributed.grad_accum=2", "msf.lr=0.002", "msf.adam_eps=1e-6",
                   "msf.weight_decay=0.01", "msf.grad_clip=0.1")
    raw = load_ds_config(ROOT / "ds_configs" / name)
    assert raw["train_batch_size"] == "auto" and raw["optimizer"]["params"]["lr"] == "auto"
    ds = build_ds_config(cfg)
    assert no_autos(ds)
    batch = (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"])
    assert batch == (16, 4, 2)
    assert ds["optimizer"]["type"] == "AdamW"
    assert ds["optimizer"]["params"]["lr"] == 0.002
    assert ds["optimizer"]["params"]["eps"] == 1e-6
    assert ds["optimizer"]["params"]["weight_decay"] == 0.01
    assert ds["gradient_clipping"] == 0.1
    assert ds["bf16"] == {"enabled": False} and ds["fp16"] == {"enabled": False}
    assert zero_stage(ds) == {"zero0.json": 0, "zero1.json": 1, "zero2.json": 2}.get(name, 3)
    assert "scheduler" not in ds  # the schedule is ours (LambdaLR), as in the single-process driver


@pytest.mark.parametrize("name", SHIPPED)
def test_deepspeed_accepts_the_resolved_config(name, monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    from deepspeed.runtime.config import DeepSpeedConfig

    cfg = cfg_with(f"distributed.ds_config=ds_configs/{name}", "distributed.num_workers=1")
    parsed = DeepSpeedConfig(build_ds_config(cfg))  # DeepSpeed's own validation (world size 1 here)
    assert parsed.train_batch_size == cfg.msf.batch_size
    assert parsed.zero_optimization_stage == zero_stage(build_ds_config(cfg))


def test_precision_follows_backbone_dtype():
    assert build_ds_config(cfg_with("backbone.dtype=bfloat16"))["bf16"] == {"enabled": True}
    assert build_ds_config(cfg_with("backbone.dtype=float16"))["fp16"] == {"enabled": True}
    with pytest.raises(DeepSpeedConfigError, match=r"bf16.enabled: True contradicts backbone.dtype = 'float"):
        resolve_ds_config({"bf16": {"enabled": True}}, cfg_with())


def test_micro_batch_is_derived_from_the_global_batch():
    b = batch_sizes(cfg_with("msf.batch_size=24", "distributed.grad_accum=3", "distributed.num_workers=2"))
    assert (b.global_batch, b.micro, b.accum, b.world, b.per_worker) == (24, 4, 3, 2, 12)


def test_batch_invariant_error_names_the_fields_and_the_fix():
    cfg = cfg_with("msf.batch_size=8", "distributed.micro_batch_size=3", "distributed.grad_accum=2")
    with pytest.raises(DeepSpeedConfigError) as err:
        build_ds_config(cfg)
    msg = str(err.value)
    assert "global = micro * accum * world" in msg
    assert "msf.batch_size = 8" in msg and "distributed.micro_batch_size (3)" in msg
    assert "distributed.grad_accum (2)" in msg and "distributed.num_workers (2)" in msg
    assert "Fix: set msf.batch_size=12" in msg

    with pytest.raises(DeepSpeedConfigError, match=r"msf.batch_size \(10\) must be divisible by .* = 4"):
        batch_sizes(cfg_with("msf.batch_size=10", "distributed.grad_accum=2"))


def test_numbers_in_the_json_must_agree_with_our_config():
    cfg = cfg_with("msf.batch_size=8", "msf.lr=0.003")
    agreeing = resolve_ds_config({"train_batch_size": 8,
                                  "optimizer": {"type": "AdamW", "params": {"lr": 0.003}}}, cfg)
    assert agreeing["train_batch_size"] == 8
    with pytest.raises(DeepSpeedConfigError) as err:
        resolve_ds_config({"train_batch_size": 32, "gradient_accumulation_steps": 4,
                           "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}}}, cfg)
    msg = str(err.value)
    assert "3 problem(s)" in msg
    assert "train_batch_size: 32 contradicts msf.batch_size = 8" in msg
    assert "gradient_accumulation_steps: 4 contradicts distributed.grad_accum = 1" in msg
    assert "optimizer.params.lr: 0.0001 contradicts msf.lr = 0.003" in msg
    assert 'write "auto"' in msg


def test_unknown_and_unsupported_settings_are_all_listed_at_once():
    ds = {
        "zero_optimisation": {"stage": 2},  # typo: DeepSpeed itself would silently ignore it
        "scheduler": {"type": "WarmupDecayLR"},
        "elasticity": {"enabled": True},
        "optimizer": {"type": "Lamb", "params": {"lr": "auto", "max_grad_norm": 1.0}},
        "zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}, "reduce_bucket_size": "auto"},
        "bf16": {"enabled": True}, "fp16": {"enabled": True},
    }
    with pytest.raises(DeepSpeedConfigError) as err:
        resolve_ds_config(ds, cfg_with("backbone.dtype=bfloat16"))
    msg = str(err.value)
    assert "zero_optimisation: unknown DeepSpeed key; did you mean 'zero_optimization'?" in msg
    assert "scheduler: the LR schedule comes from msf.steps / msf.warmup_ratio" in msg
    assert "elasticity:" in msg
    assert "optimizer.type: 'Lamb' is not supported" in msg
    assert "optimizer.params.max_grad_norm: unknown parameter" in msg and "gradient_clipping" in msg
    assert "offload_param: parameter offload needs stage 3" in msg
    assert 'zero_optimization.reduce_bucket_size: "auto" is not filled' in msg
    assert "fp16.enabled: True contradicts backbone.dtype = 'bfloat16'" in msg


def test_config_paths_resolve_from_any_directory(tmp_path, monkeypatch):
    """A job runs in a temporary copy of the working dir; relative ds_config paths still resolve."""
    monkeypatch.chdir(tmp_path)
    assert zero_stage(build_ds_config(cfg_with("distributed.ds_config=ds_configs/zero3.json"))) == 3
    with pytest.raises(FileNotFoundError, match=r"ds_configs/zero9.json does not exist.*shipped: .*zero2"):
        build_ds_config(cfg_with("distributed.ds_config=ds_configs/zero9.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DeepSpeedConfigError, match="not valid JSON"):
        build_ds_config(cfg_with(f"distributed.ds_config={bad}"))
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(DeepSpeedConfigError, match="must be a JSON object"):
        build_ds_config(cfg_with(f"distributed.ds_config={bad}"))


@pytest.mark.parametrize("name", ["msf.yaml", "msf_smoke.yaml"])
def test_shipped_msf_configs_load_and_resolve(name):
    cfg = load_config(ROOT / "configs" / name)
    ds = build_ds_config(cfg)
    assert zero_stage(ds) == 2, "the default is the fast choice: a replicated backbone (ZeRO-2)"
    assert ds["train_batch_size"] == cfg.msf.batch_size


def test_distributed_package_imports_neither_ray_nor_deepspeed():
    code = ("import sys, ipt_dist.distributed, ipt_dist.distributed.deepspeed_config; "
            "print(sorted(m for m in ('ray', 'deepspeed', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
