from pathlib import Path

import pytest

from ipt_dist.config import ConfigError, IPTConfig, config_from_dict, flatten_config, load_config, save_config

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_follow_the_reference():
    cfg = IPTConfig()
    assert cfg.pt.prompt_len == 100 and cfg.pt.init_std == 0.02 and cfg.pt.grad_clip == 0.1
    assert cfg.msf.alpha == 200 and cfg.msf.mid_dim == 768 and cfg.msf.lr == 3e-5 and cfg.msf.batch_size == 64
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
