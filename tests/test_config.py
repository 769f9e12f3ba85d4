from pathlib import Path

import pytest

from ipt_dist.config import ConfigError, IPTConfig, config_from_dict, flatten_config, load_config, save_config

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_follow_the_reference():
    cfg = IPTConfig()
    assert cfg.pt.prompt_len == 100 and cfg.pt.init_std == 0.02 and cfg.pt.grad_clip == 0.1
    assert cfg.msf.alpha == 200 and cfg.msf.mid_dim == 768 and cfg.msf.lr == 3e-5 and cfg.msf.batch_size == 64
    assert cfg.msf.lm_reduction == "sum"  # the reference sums the LM loss over target tokens; alpha 200 is tuned for it
    assert cfg.ist.lr == 1e-5 and cfg.ist.batch_size == 4
    assert cfg.backbone.label_smoothing == 0.1 and cfg.backbone.num_beams == 4 and cfg.backbone.max_new_tokens == 64


def test_unknown_keys_are_all_reported_with_hints():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"pt": {"lerning_rate": 1, "lr": 0.1}, "msff": {}, "ist": {"stepz": 3}})
    msg = str(e.value)
    assert "pt.lerning_rate: unknown key" in msg
    assert "msff: unknown key; did you mean 'msf'" in msg
    assert "ist.stepz: unknown key; did you mean 'steps'" in msg


def test_type_and_value_errors_are_collected():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"pt": {"lr": -1, "steps": "many"}, "backbone": {"dtype": "fp8", "dropout": "yes"},
                          "msf": {"d": 0}})
    msg = str(e.value)
    for needle in ["pt.steps: expected an integer", "backbone.dropout: expected true/false", "msf.d: must be > 0",
                   "pt.lr: must be > 0", "backbone.dtype"]:
        assert needle in msg, needle


def test_yaml_scientific_notation_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("pt:\n  lr: 1e-5\nsweep:\n  dims: {5: /a, 50: /b}\n")
    cfg = load_config(p, ["pt.steps=7", "backbone.name_or_path=tiny-bart"])
    assert cfg.pt.lr == 1e-5 and cfg.pt.steps == 7 and cfg.backbone.name_or_path == "tiny-bart"
    assert cfg.sweep.dims == {5: "/a", 50: "/b"}


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pt: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(top)


def test_round_trip_and_flatten(tmp_path):
    cfg = load_config(None, ["pt.lr=0.5"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    flat = flatten_config(cfg)
    assert flat["pt.lr"] == 0.5 and flat["backbone.name_or_path"] == "tiny-t5"


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")) + sorted((ROOT / "ipt_dist" / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    load_config(path)


def test_msf_lm_reduction_is_checked():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"msf": {"lm_reduction": "token_mean"}})
    msg = str(e.value)
    assert "msf.lm_reduction: must be 'sum' or 'mean', got 'token_mean'" in msg and "Fix:" in msg
    assert config_from_dict({"msf": {"lm_reduction": "mean"}}).msf.lm_reduction == "mean"


def test_pt_init_is_checked():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"pt": {"init": "vocabulary", "init_vocab_top": 0}})
    assert "pt.init: must be 'random' or 'vocab'" in str(e.value) and "pt.init_vocab_top" in str(e.value)
    assert config_from_dict({"pt": {"init": "vocab"}}).pt.init == "vocab"


def test_repeated_sections_and_keys_are_refused(tmp_path):
    import pytest

    from ipt_dist.config import ConfigError, load_config

    p = tmp_path / "c.yaml"
    p.write_text("pt:\n  lr: 0.3\n  steps: 5\nmsf:\n  d: 4\npt:\n  batch_size: 2\n")
    with pytest.raises(ConfigError, match=r"repeated keys.*'pt' on line 6 repeats line 1"):
        load_config(p)
    p.write_text("pt:\n  lr: 0.3\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"'lr' on line 3 repeats line 2"):
        load_config(p)
    p.write_text("\ufeffpt:\n  lr: 0.3\n")  # a UTF-8 BOM (Windows editors) is fine
    assert load_config(p).pt.lr == 0.3


def test_a_few_shot_draw_without_a_seed_is_an_error():
    """random.Random(None) would draw other examples in every process: PT, MSF and IST could not
    train on the same draw, nor could it be recorded."""
    with pytest.raises(ConfigError, match="data.train_size: a few-shot draw needs a seed.*Fix: set data.data_seed"):
        config_from_dict({"data": {"train_size": 16}})
    assert config_from_dict({"data": {"train_size": 16, "data_seed": 100}}).data.train_size == 16


def test_shipped_msf_and_ist_sweep_configs_describe_one_run():
    """configs/msf.yaml trains the decoders configs/ist_sweep.yaml evaluates (the README's cluster
    commands): MSF on setting 3's draw, the same backbone, tokenisation, prompt length and data."""
    from ipt_dist.provenance import backbone_fingerprint

    msf, ist = load_config(ROOT / "configs" / "msf.yaml"), load_config(ROOT / "configs" / "ist_sweep.yaml")
    assert msf.data.data_seed == ist.sweep.data_seeds[0] == ist.data.data_seed
    assert msf.data.data_seed not in ist.sweep.data_seeds[1:]
    assert sorted(ist.sweep.data_seeds) == [13, 21, 42, 87, 100]  # the reference's five seeds
    assert backbone_fingerprint(msf) == backbone_fingerprint(ist)
    for field in ("data_dir", "format", "split_file", "tasks", "unseen_tasks", "k", "train_size", "max_examples",
                  "task_prefix", "tasks_file"):
        assert getattr(msf.data, field) == getattr(ist.data, field), field
    # MSF reads the PT sweep's prompts and writes the checkpoint the sweep maps its d to
    assert Path(msf.msf.prompts_dir) == Path(ist.output_dir) / "prompts"
    assert Path(ist.output_dir) / ist.sweep.dims[msf.msf.d] == Path(msf.output_dir) / "msf"


def test_pt_msf_ist_share_one_schedule_dataclass_with_their_own_defaults_and_keys():
    import dataclasses

    from ipt_dist.config import ISTConfig, MSFConfig, PTConfig, ScheduleConfig

    names = [f.name for f in dataclasses.fields(ScheduleConfig)]
    assert len(names) == 9
    defaults = {PTConfig: (1e-4, 8, 1000, 100), MSFConfig: (3e-5, 64, 10000, 5000), ISTConfig: (1e-5, 4, 1000, 100)}
    for cls, (lr, bs, steps, every) in defaults.items():
        assert issubclass(cls, ScheduleConfig)
        c = cls()
        assert (c.lr, c.batch_size, c.steps, c.eval_every) == (lr, bs, steps, every)
        assert (c.warmup_ratio, c.grad_clip, c.seed, c.adam_eps, c.weight_decay) == (0.06, 0.1, 42, 1e-8, 0.0)
    cfg = load_config(None, ["pt.lr=0.5", "msf.batch_size=32", "ist.steps=7"])  # the same YAML keys per section
    assert (cfg.pt.lr, cfg.msf.batch_size, cfg.ist.steps) == (0.5, 32, 7)
    with pytest.raises(ConfigError) as e:
        load_config(None, ["pt.stepz=1", "msf.grad_clip=-1", "ist.lr=0"])
    msg = str(e.value)
    assert "pt.stepz: unknown key; did you mean 'steps'?" in msg
    assert "msf.grad_clip: must be >= 0" in msg and "ist.lr: must be > 0" in msg
