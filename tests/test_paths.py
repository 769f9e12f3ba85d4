"""ipt_dist.paths: one absolutize, every derived path, and agreement with the copies it replaces."""

from __future__ import annotations

from pathlib import Path

import pytest

from ipt_dist.config import load_config
from ipt_dist.paths import (
    absolute,
    absolute_uri,
    absolutize,
    build_once,
    data_dir,
    msf_checkpoint_dir,
    msf_prompts_dir,
    pt_prompts_dir,
    ray_storage_path,
    token_cache_dir,
)


def test_absolute_expands_home_and_takes_relative_paths_from_cwd_or_base(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert absolute("a/../b") == tmp_path / "b"
    assert absolute("~/x") == tmp_path / "home" / "x"
    assert absolute("d4", base=tmp_path / "out") == tmp_path / "out" / "d4"
    assert absolute("/abs/d4", base=tmp_path / "out") == Path("/abs/d4")


def test_absolute_uri_rewrites_relative_sqlite_and_paths_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_uri("sqlite:///m.db") == f"sqlite:///{tmp_path / 'm.db'}"  # four slashes: absolute
    assert absolute_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert absolute_uri("sqlite:///:memory:") == "sqlite:///:memory:"  # not a file
    assert absolute_uri("s3://bucket/ray") == "s3://bucket/ray"
    assert absolute_uri("http://host:5000") == "http://host:5000"
    assert absolute_uri("ray_results") == str(tmp_path / "ray_results")


def test_absolutize_makes_given_paths_absolute_and_leaves_unset_ones_derived(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["output_dir=runs/x", "data.data_dir=data", "data.tasks_file=meta/tasks.json",
                             "data.split_file=split.json", "msf.prompts_dir=p", "backbone.cache_dir=~/cache",
                             "distributed.storage_path=store", "tracking.tracking_uri=sqlite:///m.db",
                             "sweep.dims={4: msf_d4/msf, 8: /abs/msf}"])
    a = absolutize(cfg)
    out = tmp_path / "runs" / "x"
    assert a.output_dir == str(out) and a.data.data_dir == str(tmp_path / "data")
    assert a.data.tasks_file == str(tmp_path / "meta" / "tasks.json") and a.data.split_file == str(tmp_path / "split.json")
    assert a.msf.prompts_dir == str(tmp_path / "p") and a.backbone.cache_dir == str(Path("~/cache").expanduser())
    assert a.distributed.storage_path == str(tmp_path / "store")
    assert a.tracking.tracking_uri == f"sqlite:///{tmp_path / 'm.db'}"
    assert a.sweep.dims == {4: str(out / "msf_d4" / "msf"), 8: "/abs/msf"}  # dims: relative to output_dir
    assert cfg.output_dir == "runs/x"  # a copy

    bare = absolutize(load_config(None, ["output_dir=o"]))
    assert bare.data.data_dir is None and bare.msf.prompts_dir is None and bare.tracking.tracking_uri is None
    assert msf_prompts_dir(bare) == pt_prompts_dir(bare) == tmp_path / "o" / "prompts"  # derived: absolute
    assert ray_storage_path(bare) == str(tmp_path / "o" / "ray_results")
    assert token_cache_dir(bare) == tmp_path / "o" / "cache" / "tokens"
    assert msf_checkpoint_dir(bare) == tmp_path / "o" / "msf"

    hub = absolutize(load_config(None, ["output_dir=o", "data.format=hf", "data.data_dir=org/dataset"]))
    assert hub.data.data_dir == "org/dataset"  # a hub name, not a path


def test_data_dir_writes_the_demo_tasks_once(tmp_path):
    cfg = load_config(None, [f"output_dir={tmp_path}"])
    d = data_dir(cfg)
    assert d == tmp_path / "demo_data" and (d / "tasks.json").is_file()
    stamp = (d / "tasks.json").stat().st_mtime_ns
    assert data_dir(cfg) == d and (d / "tasks.json").stat().st_mtime_ns == stamp


def test_absolutize_gives_the_sweeps_job_id_fields_unchanged(tmp_path, monkeypatch):
    """Sweep job ids hash data.data_dir and data.tasks_file as the sweep's prepare_config sets them:
    absolutize (+ data_dir for the demo tasks) must give the same strings, so a sweep switched to
    paths.py keeps resuming its directories."""
    from ipt_dist.distributed.sweep import prepare_config

    monkeypatch.chdir(tmp_path)
    for extra in ([], ["data.data_dir=../shared_data", "data.tasks_file=t.json", "msf.prompts_dir=p"]):
        cfg = load_config(None, ["output_dir=runs/x", "sweep.dims={4: msf_d4}", *extra])
        old, new = prepare_config(cfg), absolutize(cfg)
        new_data_dir = str(data_dir(new))
        assert (new_data_dir, new.data.tasks_file, new.output_dir, new.sweep.dims, new.msf.prompts_dir) == (
            old.data.data_dir, old.data.tasks_file, old.output_dir, old.sweep.dims, old.msf.prompts_dir)


def test_pipeline_msf_reads_the_prompts_where_stage_0_wrote_them(tmp_path):
    """The PT sweep exports to msf_prompts_dir(cfg); the pipeline's MSF config used to read
    <out>/prompts whatever msf.prompts_dir said."""
    from ipt_dist.pipeline import _msf_config

    cfg = absolutize(load_config(None, [f"output_dir={tmp_path}", f"msf.prompts_dir={tmp_path / 'mine'}"]))
    assert _msf_config(cfg, 4).msf.prompts_dir == str(tmp_path / "mine")
    cfg = absolutize(load_config(None, [f"output_dir={tmp_path}"]))
    assert _msf_config(cfg, 4).msf.prompts_dir == str(tmp_path / "prompts")
    assert _msf_config(cfg, 4).output_dir == str(tmp_path / "msf_d4")


def _write_model(tag: str):
    def build(tmp: Path) -> None:
        (tmp / "weights.bin").write_text(tag)
        (tmp / "config.json").write_text("{}")
    return build


def test_build_once_builds_then_reuses_and_leaves_no_temporary_dirs(tmp_path):
    final = tmp_path / "cache" / "model"
    assert build_once(final, _write_model("first"), "building") == final
    assert build_once(final, _write_model("second"), "building") == final
    assert (final / "weights.bin").read_text() == "first"
    assert sorted(p.name for p in final.parent.iterdir()) == ["model"]


def test_build_once_loser_of_a_concurrent_build_uses_the_winners_copy(tmp_path):
    # The first PT jobs of a sweep convert the backbone at the same time: the one whose rename comes
    # second found a non-empty directory and failed its pack (OSError: Directory not empty).
    final = tmp_path / "model"

    def racing(tmp: Path) -> None:
        _write_model("mine")(tmp)
        _write_model("winner")(final.parent / "winner-tmp")  # another process finishes first ...
        (final.parent / "winner-tmp").rename(final)  # ... and publishes

    (tmp_path / "winner-tmp").mkdir()
    assert build_once(final, racing, "building") == final
    assert (final / "weights.bin").read_text() == "winner"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_build_once_failure_leaves_nothing_under_the_final_name(tmp_path):
    final = tmp_path / "model"

    def broken(tmp: Path) -> None:
        (tmp / "half").write_text("x")
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError, match="conversion failed"):
        build_once(final, broken, "building")
    assert list(tmp_path.iterdir()) == []
    (final).mkdir()
    (final / "stray").write_text("not a model")  # something in the way that is not a finished build
    built = []
    with pytest.raises(FileExistsError, match=f"{final} exists but holds no config.json.*Fix: delete"):
        build_once(final, built.append, "building")  # refused before the (expensive) build
    assert built == []
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
