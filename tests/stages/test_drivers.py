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
        prov = meta["provenance"]  # what the prompt was trained from: this task's draw, this backbone
        assert list(prov["data"]["train_digest"]) == [t] and prov["data"]["data.data_seed"] is None
        assert prov["backbone"]["backbone"] == "tiny-t5" and prov["backbone"]["backbone.chat_template"] is False
        assert meta["data_seed"] == tiny_cfg.data.data_seed  # the draw its PT score pairs with
    assert len(read_jsonl(out / "pt" / "results.jsonl")) == 4

    assert main(["msf", "--config", cfg_path]) == 0
    meta = json.loads((out / "msf" / "msf.json").read_text())
    assert meta["d"] == 4 and meta["tasks"] == tiny_cfg.data.tasks and (out / "msf" / "autoencoder.safetensors").is_file()
    prov = meta["provenance"]
    assert prov["data"]["tasks"] == tiny_cfg.data.tasks == list(prov["prompts"])
    assert prov["data"]["train_digest"]["demo_topic"] == load_prompt(prompt_path(out / "prompts", "demo_topic"))[1][
        "provenance"]["data"]["train_digest"]["demo_topic"]  # MSF trained on the data its prompts were tuned on
    assert prov["backbone"] == {"backbone": "tiny-t5", "backbone.dtype": "float32", "backbone.chat_template": False,
                                "backbone.max_input_len": 32, "backbone.max_target_len": 8, "data.task_prefix": True,
                                "pt.prompt_len": 4}
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


def test_msf_refuses_prompts_of_another_draw_or_backbone(tiny_cfg):
    """A prompt file records what it was tuned on; MSF refuses prompts of another draw or backbone
    (files without provenance, written by hand or before it was recorded, are not checked)."""
    from dataclasses import replace

    from ipt_dist.provenance import prompt_provenance
    from ipt_dist.stages.common import load_raw

    tiny_cfg.data.train_size, tiny_cfg.data.data_seed = 6, 42
    prompts = tiny_cfg.out / "prompts"
    tasks = load_raw(tiny_cfg, ["demo_sentiment", "demo_topic"], 42)
    other_draw = load_raw(tiny_cfg, ["demo_topic"], 13)["demo_topic"]
    bf16 = replace(tiny_cfg, backbone=replace(tiny_cfg.backbone, dtype="bfloat16"))
    save_prompt(prompt_path(prompts, "demo_sentiment"), torch.zeros(4, 64), backbone="tiny-t5",
                provenance=prompt_provenance(bf16, tasks["demo_sentiment"], 42))
    save_prompt(prompt_path(prompts, "demo_topic"), torch.zeros(4, 64), backbone="tiny-t5",
                provenance=prompt_provenance(tiny_cfg, other_draw, 13))
    save_prompt(prompt_path(prompts, "demo_parity"), torch.zeros(4, 64), backbone="tiny-t5")
    with pytest.raises(ArtifactError) as e:
        run_msf(tiny_cfg)
    msg = str(e.value)
    assert "demo_sentiment: backbone.dtype: prompt 'bfloat16' vs config 'float32'" in msg
    assert "demo_topic: data.data_seed: prompt 13 vs config 42\n" in msg
    assert "demo_topic: training data (digest of the train split) differs for 1 of 1 tasks" in msg
    assert "demo_parity" not in msg and "Fix: train stage 0 with this config's data and backbone" in msg
    assert not (tiny_cfg.out / "msf" / "msf.json").exists()


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


def _msf_checkpoint(cfg, ae=None, *, seed=None, **changes):
    """An MSF checkpoint of `cfg`'s run whose provenance is built by the real helper from a config
    with `changes` ({"backbone.dtype": "bfloat16", ...}) and the data drawn with `seed`."""
    from dataclasses import replace

    from ipt_dist.artifacts import save_msf_checkpoint
    from ipt_dist.modeling.autoencoder import PromptAutoencoder
    from ipt_dist.provenance import msf_provenance
    from ipt_dist.stages.common import load_raw, resolve_tasks

    trained = replace(cfg, backbone=replace(cfg.backbone), data=replace(cfg.data), pt=replace(cfg.pt))
    for key, value in changes.items():
        section, name = key.split(".")
        setattr(getattr(trained, section), name, value)
    tasks = resolve_tasks(cfg).train
    for t in tasks:
        save_prompt(prompt_path(cfg.out / "prompts", t), torch.zeros(4, 64), backbone="tiny-t5")
    seed = trained.data.data_seed if seed is None else seed
    prov = msf_provenance(trained, load_raw(trained, tasks, seed), seed, cfg.out / "prompts")
    ae = ae or PromptAutoencoder(4, trained.pt.prompt_len, 64, 32)
    save_msf_checkpoint(cfg.out / "msf", ae, {"backbone": trained.backbone.name_or_path, "tasks": tasks,
                                              "provenance": prov})


def test_ist_refuses_a_checkpoint_of_another_backbone(tiny_cfg):
    from ipt_dist.config import ConfigError

    _msf_checkpoint(tiny_cfg, **{"backbone.name_or_path": "tiny-bart"})
    with pytest.raises(ConfigError, match="backbone: checkpoint 'tiny-bart' vs config 'tiny-t5'"):
        run_ist(tiny_cfg)
    _msf_checkpoint(tiny_cfg, **{"pt.prompt_len": 6})
    with pytest.raises(ConfigError, match="pt.prompt_len: checkpoint 6 vs config 4"):
        run_ist(tiny_cfg)


def test_ist_refuses_a_decoder_of_another_draw_or_backbone_listing_every_mismatch(tiny_cfg):
    """`ipt ist` trains the seen tasks on the config's draw (setting 3): MSF must have trained on it."""
    from ipt_dist.config import ConfigError

    tiny_cfg.data.train_size, tiny_cfg.data.data_seed = 6, 42
    _msf_checkpoint(tiny_cfg, seed=13, **{"backbone.dtype": "bfloat16", "backbone.chat_template": True})
    with pytest.raises(ConfigError) as e:
        run_ist(tiny_cfg)
    msg = str(e.value)
    assert "(4 mismatches, checkpoint value vs config value)" in msg
    assert "data.data_seed: checkpoint 13 vs config 42 (setting 3's draw)" in msg
    assert "backbone.dtype: checkpoint 'bfloat16' vs config 'float32'" in msg
    assert "backbone.chat_template: checkpoint True vs config False" in msg
    assert "training data (digest of the train split) differs for 3 of 3 tasks: demo_sentiment (" in msg
    assert "Fix: " in msg
    assert not (tiny_cfg.out / "ist" / "results.jsonl").exists()  # refused before any job


def test_ist_refuses_a_decoder_whose_data_file_changed(tiny_cfg, tmp_path, demo_dir):
    """Same seed, same config, one changed example in a data file: the digest names the task."""
    import shutil

    from ipt_dist.config import ConfigError

    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    tiny_cfg.data.data_dir = str(data)
    _msf_checkpoint(tiny_cfg)
    lines = (data / "demo_topic" / "train.jsonl").read_text().splitlines(keepends=True)
    row = json.loads(lines[0])
    row["input"] += " again"
    (data / "demo_topic" / "train.jsonl").write_text(json.dumps(row) + "\n" + "".join(lines[1:]))
    with pytest.raises(ConfigError, match=r"differs for 1 of 3 tasks: demo_topic \(checkpoint \w+ vs config \w+\)"):
        run_ist(tiny_cfg)


def test_ist_refuses_a_checkpoint_without_provenance(tiny_cfg):
    """Checkpoints written before provenance was recorded: an error (a research tool must not trust
    a decoder whose training draw it cannot check), whose fix is to retrain MSF."""
    from ipt_dist.artifacts import save_msf_checkpoint
    from ipt_dist.config import ConfigError
    from ipt_dist.modeling.autoencoder import PromptAutoencoder

    save_msf_checkpoint(tiny_cfg.out / "msf", PromptAutoencoder(4, 4, 64, 32), {"backbone": "tiny-t5"})
    with pytest.raises(ConfigError, match="records no provenance .*Fix: retrain MSF"):
        run_ist(tiny_cfg)
    tiny_cfg.ist.random_decoder = True  # the baseline uses no MSF weights: nothing to check
    from ipt_dist.stages.ist import check_msf_provenance

    check_msf_provenance(tiny_cfg, ["demo_sentiment"])


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


def test_pt_init_from_reads_prompt_files_and_adapters_and_refuses_wrong_ones(tiny_cfg, tmp_path, capsys):
    """`pt.init_from`: each task starts from its prompt file or its PEFT PromptTuning adapter; a
    prompt of another shape or backbone is one error naming every problem, exit 2, before training."""
    from ipt_dist.peft_io import adapter_config, write_adapter

    tasks = ["demo_sentiment", "demo_topic"]
    start = {t: torch.randn(4, 64, generator=torch.Generator().manual_seed(i)) for i, t in enumerate(tasks)}
    src = tmp_path / "init"
    save_prompt(prompt_path(src, tasks[0]), start[tasks[0]], backbone="tiny-t5")
    write_adapter(src / tasks[1], start[tasks[1]], adapter_config(4, 64, encoder_decoder=True, base_model="tiny-t5"), {})
    sets = [f"data.tasks=[{', '.join(tasks)}]", "data.unseen_tasks=[]", "pt.steps=1", "pt.eval_every=1",
            "pt.lr=1e-9", "pt.init=random", f"pt.init_from={src}"]
    def sets_args(items):
        return [a for item in items for a in ("--set", item)]

    assert main(["pt", "--config", _write(tiny_cfg, tmp_path / "c.yaml"), *sets_args(sets)]) == 0
    for t in tasks:  # one Adam step at lr 1e-9 moves no entry by more than ~1e-9
        p, _ = load_prompt(prompt_path(tiny_cfg.out / "prompts", t))
        assert torch.allclose(p, start[t], atol=1e-6), t

    bad = tmp_path / "bad"
    save_prompt(prompt_path(bad, tasks[0]), torch.zeros(5, 64), backbone="tiny-t5")
    write_adapter(bad / tasks[1], start[tasks[1]], adapter_config(4, 64, encoder_decoder=True, base_model="tiny-llama"), {})
    capsys.readouterr()
    rc = main(["pt", "--config", _write(tiny_cfg, tmp_path / "c.yaml"), "--out", str(tmp_path / "out2"),
               *sets_args([*sets[:-1], f"pt.init_from={bad}"])])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:") and "2 problem(s)" in err
    assert "prompt shape (5, 64)" in err and "'tiny-llama'" in err
    assert not (tmp_path / "out2" / "prompts" / f"{tasks[0]}.safetensors").exists()


@pytest.mark.slow
def test_single_stage_runs_record_each_tasks_draw_as_a_dataset_input(tiny_cfg, tmp_path):
    """`ipt pt` and `ipt ist` with tracking: each run's dataset inputs are the tasks' training draws,
    named `<task>@<draw>`, with the digest of the examples it trained on (MLflow 3's dataset column)."""
    from mlflow import MlflowClient

    from ipt_dist.data.selection import load_raw
    from ipt_dist.provenance import split_digest

    tasks = ["demo_sentiment", "demo_topic"]
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = [f"data.tasks=[{', '.join(tasks)}]", "data.unseen_tasks=[]", "pt.steps=1", "pt.eval_every=1",
            "tracking.enabled=true", f"tracking.tracking_uri={db}", "tracking.experiment=single"]
    args = ["pt", "--config", _write(tiny_cfg, tmp_path / "c.yaml")]
    for item in sets:
        args += ["--set", item]
    assert main(args) == 0
    assert main(["msf", *args[1:]]) == 0
    assert main(["ist", *args[1:], "--set", "ist.steps=1", "--set", "ist.eval_every=1"]) == 0
    from ipt_dist.provenance import draw_seed

    client = MlflowClient(db)
    runs = client.search_runs([client.get_experiment_by_name("single").experiment_id])
    raw = load_raw(tiny_cfg, tasks)
    seed = draw_seed(tiny_cfg, tiny_cfg.data.data_seed)
    for run in runs:  # pt, msf and ist
        got = {d.dataset.name: d.dataset.digest for d in client.get_run(run.info.run_id).inputs.dataset_inputs}
        assert set(got) == {f"{t}@{'all' if seed is None else seed}" for t in tasks}, run.info.run_name
        for name, digest in got.items():
            assert digest == split_digest(raw[name.split("@")[0]].train)[:36]
    assert len(runs) == 3
