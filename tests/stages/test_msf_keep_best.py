"""Single-process MSF keeps its best checkpoint by the rule of every loop (ipt_dist.train.best):
a task whose dev score is NaN is left out of the mean. Before, one NaN task made every mean NaN,
so no checkpoint was ever saved, while distributed MSF left NaN out."""

from dataclasses import replace

import torch

from ipt_dist.artifacts import read_jsonl
from ipt_dist.data.batching import TokenizedSplit
from ipt_dist.data.selection import load_tokenized
from ipt_dist.modeling.backbone import build_backbone
from ipt_dist.stages.msf import train_msf


def test_a_task_without_dev_examples_does_not_stop_msf_keeping_its_best(tiny_cfg, tmp_path):
    cfg = replace(tiny_cfg, msf=replace(tiny_cfg.msf, steps=2, eval_every=2))
    tasks = list(cfg.data.tasks)
    bb = build_backbone(cfg.backbone)
    tok = load_tokenized(cfg, bb, tasks)
    # demo_parity has no dev examples: it scores NaN (evaluate_groups), the other two score numbers
    tok["demo_parity"] = replace(tok["demo_parity"], dev=TokenizedSplit([], [], []))
    data = [tok[t] for t in tasks]
    prompts = torch.randn(len(tasks), cfg.pt.prompt_len, bb.hidden_size,
                          generator=torch.Generator().manual_seed(0)) * 0.02  # (T, L, H)
    out = tmp_path / "msf"
    out.mkdir()
    best = train_msf(cfg, bb, prompts, data, tasks, out)
    (row,) = [r for r in read_jsonl(out / "history.jsonl") if "dev_mean" in r]
    assert row["dev/demo_parity"] is None  # NaN (history.jsonl writes it as null)
    finite = [row["dev/demo_sentiment"], row["dev/demo_topic"]]
    assert row["dev_mean"] == sum(finite) / 2
    assert (best.best, best.step) == (row["dev_mean"], 2)
    assert (out / "autoencoder.safetensors").is_file(), "the best checkpoint was never saved"
