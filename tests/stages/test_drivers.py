"""The single-process drivers end to end (ipt pt -> ipt msf -> ipt ist) and their input checks."""

import json

import pytest
import torch
import yaml

from ipt_dist.artifacts import ArtifactError, load_prompt, prompt_path, read_jsonl, save_prompt
from ipt_dist.cli import main
from ipt_dist.config import config_to_dict
from ipt_dist.data.tasks import DataError
from ipt_dist.stages.ist import run_ist
from ipt_dist.stages.msf import run_msf
from ipt_dist.stages.pt import run_pt


def _write(cfg, path):
    path.write_text(yaml.safe_dump(config_to_dict(cfg)))
    return str(path)


@pytest.mark.slow
def test_cli_pipeline_writes_every_artifact(tiny_cfg, tmp_path):
    cfg_path = _write(tiny_cfg, tmp_path / "c.yaml")
    out = tiny_cfg.out
    assert main(["pt", "--config", cfg_path]) == 0
    for t in tiny_cfg.data.tasks + tiny_cfg.data.unseen_tasks:
        p, meta = load_prompt(prompt_path(out / "prompts", t))
        assert p.shape == (4, 64) and meta["backbone"] == "tiny-t5" and meta["task"] == t
        assert meta["prompt_len"] == 4 and meta["hidden"] == 64 and "dev_score" in meta
        assert meta["data_seed"] == tiny_cfg.data.data_seed  # the draw its PT score pairs with
    assert len(read_jsonl(out / "pt" / "results.jsonl")) == 4

    assert main(["msf", "--config", cfg_path]) == 0
    meta = json.loads((out / "msf" / "msf.json").read_text())
    assert meta["d"] == 4 and meta["tasks"] == tiny_cfg.data.tasks and (out / "msf" / "autoencoder.safetensors").is_file()
    history = read_jsonl(out / "msf" / "history.jsonl")
    assert len(history) == 8 and {"loss", "lm_loss", "rec_loss", "lr"} <= set(history[0])

    assert main(["ist", "--config", cfg_path]) == 0
    rows = read_jsonl(out / "ist" / "results.jsonl")
    assert {r["task"] for r in rows} == set(tiny_cfg.data.tasks + tiny_cfg.data.unseen_tasks)
    for r in rows:
        assert {"task", "seed", "lr", "d", "best_dev", "test"} <= set(r) and r["d"] == 4
    assert len(list((out / "ist" / "z").glob("*.safetensors"))) == 4

    # Re-running is idempotent: nothing is trained twice, nothing duplicated.
    assert main(["pt", "--config", cfg_path]) == 0
    assert main(["ist", "--config", cfg_path]) == 0
    assert len(read_jsonl(out / "pt" / "results.jsonl")) == 4
    assert len(read_jsonl(out / "ist" / "results.jsonl")) == 4


def test_msf_refuses_missing_and_misshaped_prompts_all_at_once(tiny_cfg):
    prompts = tiny_cfg.out / "prompts"
    save_prompt(prompt_path(prompts, "demo_sentiment"), torch.zeros(4, 64), backbone="tiny-t5")
    save_prompt(prompt_path(prompts, "demo_topic"), torch.zeros(5, 64), backbone="tiny-t5")
    # demo_parity has no prompt file: the reference silently used random noise here
    with pytest.raises(ArtifactError) as e:
        run_msf(tiny_cfg)
    msg = str(e.value)
    assert "2 problem(s)" in msg
    assert "demo_parity.safetensors does not exist; run stage 0" in msg
    assert "demo_topic.safetensors: prompt shape (5, 64) does not match" in msg


def test_nan_prompt_and_truncated_prompt_are_rejected(tiny_cfg):
    prompts = tiny_cfg.out / "prompts"
    bad = torch.zeros(4, 64)
    bad[0, 0] = float("nan")
    save_prompt(prompt_path(prompts, "demo_sentiment"), bad)
    with pytest.raises(ArtifactError, match="NaN or Inf"):
        load_prompt(prompt_path(prompts, "demo_sentiment"))
    save_prompt(prompt_path(prompts, "demo_topic"), torch.zeros(4, 64))
    path = prompt_path(prompts, "demo_topic")
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ArtifactError, match="truncated or corrupt"):
        load_prompt(path)


def test_unknown_tasks_fail_before_training(tiny_cfg, tmp_path):
    tiny_cfg.data.tasks = ["demo_sentiment", "no_such_task"]
    with pytest.raises(DataError, match="no_such_task"):
        run_pt(tiny_cfg)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["demo_sentiment"], "test": ["demo_topicc"]}))
    tiny_cfg.data.tasks, tiny_cfg.data.split_file = [], str(split)
    with pytest.raises(DataError, match="demo_topicc"):
        run_pt(tiny_cfg)


def test_ist_refuses_a_checkpoint_of_another_backbone(tiny_cfg):
    from ipt_dist.artifacts import save_msf_checkpoint
    from ipt_dist.modeling.autoencoder import PromptAutoencoder

    save_msf_checkpoint(tiny_cfg.out / "msf", PromptAutoencoder(4, 4, 64, 32), {"backbone": "tiny-bart"})
    with pytest.raises(ArtifactError, match="backbone: checkpoint 'tiny-bart' vs config 'tiny-t5'"):
        run_ist(tiny_cfg)
    save_msf_checkpoint(tiny_cfg.out / "msf", PromptAutoencoder(4, 6, 64, 32), {"backbone": "tiny-t5"})
    with pytest.raises(ArtifactError, match="prompt length: checkpoint 6 vs pt.prompt_len 4"):
        run_ist(tiny_cfg)


def test_ist_without_msf_checkpoint_says_what_to_run(tiny_cfg):
    with pytest.raises(FileNotFoundError, match="point ist.msf_checkpoint at a directory written by MSF"):
        run_ist(tiny_cfg)


def test_cli_rejects_bad_config_keys(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pt:\n  learning_rate: 0.1\n")
    assert main(["pt", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "pt.learning_rate: unknown key" in err and "Traceback" not in err


def test_unwritable_output_dir_fails_before_any_work(tiny_cfg, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    tiny_cfg.output_dir = str(blocker / "run")
    with pytest.raises(ArtifactError, match="output_dir: cannot write to .*Fix: choose a writable directory"):
        run_pt(tiny_cfg)


def test_truncated_msf_checkpoint_is_detected(tiny_cfg):
    from ipt_dist.artifacts import load_msf_checkpoint, save_msf_checkpoint
    from ipt_dist.modeling.autoencoder import PromptAutoencoder

    ckpt = tiny_cfg.out / "msf"
    save_msf_checkpoint(ckpt, PromptAutoencoder(4, 4, 64, 32), {"backbone": "tiny-t5"})
    weights = ckpt / "autoencoder.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ArtifactError, match="truncated or corrupt"):
        load_msf_checkpoint(ckpt)
    (ckpt / "msf.json").write_text('{"d": 4, "prompt_')
    with pytest.raises(ArtifactError, match="msf.json: not valid JSON"):
        load_msf_checkpoint(ckpt)


def test_task_split_problems_are_clear_errors(tiny_cfg, tmp_path, caplog):
    import json
    import logging
    from dataclasses import replace

    from ipt_dist.data import DataError
    from ipt_dist.stages.common import resolve_tasks

    names = resolve_tasks(tiny_cfg).all
    split = tmp_path / "split.json"

    def with_split(obj):
        split.write_text(json.dumps(obj))
        return replace(tiny_cfg, data=replace(tiny_cfg.data, split_file=str(split), tasks=[], unseen_tasks=[]))

    for only in ("dev", "test"):
        with pytest.raises(DataError, match="no training tasks \\('train' is empty"):
            resolve_tasks(with_split({only: names[:2]}))
    with caplog.at_level(logging.WARNING):
        assert resolve_tasks(with_split({"train": names[:1], "dev": names[1:2]})).train == names[:1]
    assert "under 'dev' are not used" in caplog.text
    both = replace(tiny_cfg, data=replace(tiny_cfg.data, tasks=names[:2], unseen_tasks=names[1:3]))
    with pytest.raises(DataError, match=f"both list {names[1]}"):
        resolve_tasks(both)
    every = replace(tiny_cfg, data=replace(tiny_cfg.data, tasks=[], unseen_tasks=[], split_file=None))
    every = replace(every, data=replace(every.data, unseen_tasks=resolve_tasks(every).all))
    with pytest.raises(DataError, match="every task in .* is listed in data.unseen_tasks"):
        resolve_tasks(every)
