"""Fingerprints of the data draw and the backbone, and the decoder check (pure: no files, no model)."""

from ipt_dist.config import load_config
from ipt_dist.data.tasks import Example, TaskData, TaskInfo
from ipt_dist.provenance import (
    NO_PROVENANCE,
    backbone_fingerprint,
    check_decoder_provenance,
    data_fingerprint,
    draw_seed,
    mismatch_message,
    split_digest,
)


def _tasks(*inputs: str) -> dict[str, TaskData]:
    exs = [Example(x, ("yes",)) for x in inputs]
    return {"t": TaskData(TaskInfo("t"), train=exs, dev=exs[:1], test=exs[:1])}


def _record(cfg, tasks, seed) -> dict:
    return {"version": 1, "data": data_fingerprint(cfg, tasks, seed), "backbone": backbone_fingerprint(cfg)}


def test_the_seed_is_part_of_the_draw_only_when_it_picks_examples():
    cfg = load_config(None)
    assert draw_seed(cfg, 42) is None  # all examples of one file: any seed reads the same data
    assert draw_seed(load_config(None, ["data.train_size=8", "data.data_seed=1"]), 42) == 42
    assert draw_seed(load_config(None, ["data.k=16"]), 42) == 42


def test_split_digest_follows_content_and_order():
    a, b = Example("x", ("1",)), Example("y", ("2",))
    assert split_digest([a, b]) == split_digest([Example("x", ("1",)), Example("y", ("2",))])
    assert split_digest([a, b]) != split_digest([b, a])
    assert split_digest([a]) != split_digest([Example("x", ("1", "one"))])  # another acceptable answer


def test_a_matching_decoder_passes_and_each_mismatch_is_named():
    cfg = load_config(None, ["data.train_size=2", "data.data_seed=100", "sweep.data_seeds=[100, 13]"])
    rec = _record(cfg, _tasks("a", "b"), 100)
    assert check_decoder_provenance(rec, cfg, _tasks("a", "b"), 100, [13]) == []
    # MSF trained on seed 13, which the sweep now calls new data
    rec13 = _record(cfg, _tasks("a", "c"), 13)
    out = check_decoder_provenance(rec13, cfg, _tasks("a", "b"), 100, [13])
    assert out[0] == "data.data_seed: checkpoint 13 vs config 100 (setting 3's draw)"
    assert out[1].startswith("training data (digest of the train split) differs for 1 of 1 tasks: t (checkpoint")
    assert "draw 13 is among setting 4's new draws (sweep.data_seeds[1:] = [13])" in out[2] and len(out) == 3
    other = load_config(None, ["data.train_size=2", "data.data_seed=100", "backbone.chat_template=true",
                               "backbone.max_input_len=64"])
    out = check_decoder_provenance(rec, other, _tasks("a", "b"), 100)
    assert out == ["backbone.chat_template: checkpoint False vs config True",
                   "backbone.max_input_len: checkpoint 256 vs config 64"]
    msg = mismatch_message("/ckpt", out, "retrain")
    assert "(2 mismatches, checkpoint value vs config value):" in msg and msg.endswith("Fix: retrain")
    # a per-class draw is another draw: named against a checkpoint that drew a total (old records
    # have no such field and keep their fingerprint while it is unset)
    assert "data.shots_per_class" not in rec["data"]
    per_class = load_config(None, ["data.train_size=2", "data.data_seed=100", "data.shots_per_class=16"])
    assert draw_seed(load_config(None, ["data.shots_per_class=16", "data.data_seed=1"]), 42) == 42
    assert "data.shots_per_class: checkpoint None vs config 16" in check_decoder_provenance(
        rec, per_class, _tasks("a", "b"), 100)


def test_a_checkpoint_without_provenance_is_one_clear_problem():
    cfg = load_config(None)
    assert check_decoder_provenance(None, cfg, {}, None) == [NO_PROVENANCE]
    assert mismatch_message("/ckpt", [NO_PROVENANCE], "retrain MSF") == \
        f"the MSF checkpoint /ckpt {NO_PROVENANCE}. Fix: retrain MSF"


def test_adapter_prompts_are_digested_and_checked_like_prompt_files(tmp_path):
    """A stage-0 prompt stored as a PEFT adapter directory (accepted by MSF) is fingerprinted by its
    files' content: MSF provenance, the MSF reuse check and the sweep's checks see its changes."""
    import torch

    from ipt_dist.config import load_config
    from ipt_dist.peft_io import adapter_config, write_adapter
    from ipt_dist.provenance import check_msf_prompts, prompt_digest
    from ipt_dist.rerun import msf_inputs

    cfg = load_config(None, [f"output_dir={tmp_path}", "pt.prompt_len=4"])
    prompts = tmp_path / "prompts"
    conf = adapter_config(4, 8, encoder_decoder=True, base_model="tiny-t5")
    write_adapter(prompts / "a", torch.ones(4, 8), conf, {})
    first = prompt_digest(prompts, "a")
    assert first is not None and prompt_digest(prompts, "missing") is None
    assert msf_inputs(cfg, ["a"], prompts)["input.prompt:a"] == first
    from ipt_dist.data.tasks import TaskData, TaskInfo

    problem, unrecorded = check_msf_prompts(cfg, {"a": TaskData(TaskInfo(name="a"))}, None, prompts)
    assert problem is None and unrecorded == ["a"]  # read (no crash); an adapter records no provenance
    import shutil

    shutil.rmtree(prompts / "a")
    write_adapter(prompts / "a", torch.ones(4, 8) * 2, conf, {})
    assert prompt_digest(prompts, "a") != first


# A value for every rerun.LATE_FIELDS entry: a field added there without one fails here.
_SET = {"backbone.answer_prefix": "Answer", "data.shots_per_class": 4, "ist.z_init": "centroid"}


def test_late_fields_enter_ids_fingerprints_and_inputs_only_when_set():
    """One table (rerun.LATE_FIELDS) decides for job ids, provenance and stage inputs: at the unset
    default a late field is in none of them (earlier records stay valid); set, it is in all three."""
    from ipt_dist.rerun import LATE_FIELDS, stage_inputs
    from ipt_dist.sweep.jobs import job_context

    plain = load_config(None, ["data.data_seed=1"])  # a per-class draw needs a seed
    tasks = _tasks("a b", "c d")
    for path in LATE_FIELDS:
        section, name = path.split(".")
        stage = "ist" if section == "ist" else "pt"  # a stage section's field counts for that stage only
        assert name not in job_context(plain, stage) and stage_inputs(plain, stage).get(path) is None
        assert path not in backbone_fingerprint(plain) and path not in data_fingerprint(plain, tasks, 1)
        cfg = load_config(None, ["data.data_seed=1", f"{path}={_SET[path]}"])
        assert job_context(cfg, stage)[name] == _SET[path]
        assert stage_inputs(cfg, stage)[path] == _SET[path]
        if section == "ist":  # not in PT's or MSF's ids and inputs, nor in any fingerprint
            assert name not in job_context(cfg, "pt") and name not in job_context(cfg, "msf_eval")
            assert path not in stage_inputs(cfg, "pt") and path not in stage_inputs(cfg, "msf")
            assert path not in backbone_fingerprint(cfg) and path not in data_fingerprint(cfg, tasks, 1)
            continue
        fingerprint = backbone_fingerprint(cfg) if section == "backbone" else data_fingerprint(cfg, tasks, 1)
        assert fingerprint[path] == _SET[path]
