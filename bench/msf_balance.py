"""How MSF's LM and reconstruction terms weigh against each other for a config, at init.

    PYTHONPATH=. HF_HUB_OFFLINE=1 python bench/msf_balance.py --config configs/quality_cpu.yaml \
        --set data.data_dir=../shared/data/tasks [--prompts DIR] [--batches 4] [--tokens-only]

For a few global batches of the config's task sampler: target tokens per batch, the LM loss
(token mean and token sum), the reconstruction MSE, and the gradient norms (w.r.t. the freshly
initialised autoencoder) of the LM term under each `msf.lm_reduction` and of `alpha * MSE`.
AdamW is nearly invariant to the gradient's overall scale, so their ratio is what the reduction
and alpha decide; `alpha * tokens` under "sum" balances like `alpha` under "mean". Prompts: the
stage-0 files in --prompts, else untrained ones drawn like pt.init (say so when you quote it).
`--tokens-only` counts target tokens only, without forward passes (cheap for big batches).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from ipt_dist.config import load_config
from ipt_dist.data.sampling import TaskBalancedSampler
from ipt_dist.modeling.autoencoder import build_autoencoder
from ipt_dist.modeling.backbone import build_backbone
from ipt_dist.stages.common import load_tokenized, resolve_tasks
from ipt_dist.train.steps import MSFModel, collate_msf


def _grad_norm(loss: torch.Tensor, params: list[torch.Tensor]) -> float:
    return torch.sqrt(sum((g ** 2).sum() for g in torch.autograd.grad(loss, params))).item()


def measure(cfg, prompts_dir: str | None, batches: int, tokens_only: bool) -> dict:
    torch.manual_seed(cfg.seed)
    bb = build_backbone(cfg.backbone, "cpu")
    bb.set_train_mode(False)  # no dropout noise in the comparison
    tasks = resolve_tasks(cfg).train
    tok = load_tokenized(cfg, bb, tasks)
    data = [tok[t] for t in tasks]
    m = cfg.msf
    sampler = TaskBalancedSampler([len(d.train) for d in data], m.batch_size, temperature=m.temperature, seed=m.seed)
    info = {"config_alpha": m.alpha, "batch_size": m.batch_size, "tasks": len(tasks)}
    if tokens_only:
        n = [int((collate_msf(bb, data, sampler.global_batch_at(i))["labels"] != -100).sum()) for i in range(batches)]
        return {**info, "rows": [{"tokens": x} for x in n]}
    L, H = cfg.pt.prompt_len, bb.hidden_size
    if prompts_dir:
        from ipt_dist.artifacts import load_task_prompts

        P = load_task_prompts(prompts_dir, tasks, L, H, bb.name)
        info["prompts"] = f"stage-0 prompts in {prompts_dir}"
    elif cfg.pt.init == "vocab":
        emb = bb.model.get_input_embeddings().weight.detach().float()
        P = emb[torch.randint(0, min(cfg.pt.init_vocab_top, emb.shape[0]), (len(tasks), L))].clone()  # (T, L, H)
        info["prompts"] = "untrained (pt.init vocab)"
    else:
        P = torch.randn(len(tasks), L, H) * cfg.pt.init_std
        info["prompts"] = "untrained (pt.init random)"
    ae = build_autoencoder(cfg, H)
    params = list(ae.parameters())
    lm_only = MSFModel(bb, ae, P, alpha=0.0, lm_reduction="sum")
    rows = []
    for i in range(batches):
        batch = collate_msf(bb, data, sampler.global_batch_at(i))
        n = int((batch["labels"] != -100).sum())
        loss_sum, lm_sum, rec = lm_only(batch)  # alpha 0: loss is the LM token sum
        gn_sum = _grad_norm(loss_sum, params)
        tasks_, inverse = torch.unique(batch["group"], return_inverse=True)
        mse = torch.nn.functional.mse_loss(ae(P[tasks_])[inverse], P[tasks_][inverse])  # as in MSFModel
        rows.append({"tokens": n, "lm_mean": float(lm_sum) / n, "lm_sum": float(lm_sum), "mse": float(rec),
                     "gn_lm_mean": gn_sum / n, "gn_lm_sum": gn_sum, "gn_alpha_mse": _grad_norm(m.alpha * mse, params)})
    return {**info, "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--prompts", default=None, help="stage-0 prompt files (default: untrained prompts)")
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--tokens-only", action="store_true")
    args = p.parse_args()
    cfg = load_config(args.config, args.set)
    res = measure(cfg, args.prompts, args.batches, args.tokens_only)
    rows = res.pop("rows")
    print(f"{args.config} {' '.join(args.set)}: {res}")
    for k in rows[0]:
        vals = [r[k] for r in rows]
        print(f"  {k:>12}: mean {statistics.mean(vals):.4g}  min {min(vals):.4g}  max {max(vals):.4g}")
    tokens = statistics.mean(r["tokens"] for r in rows)
    if not args.tokens_only:
        rec = statistics.mean(r["gn_alpha_mse"] for r in rows)
        print(f"  grad norm alpha*MSE / LM: {rec / statistics.mean(r['gn_lm_mean'] for r in rows):.3g} with "
              f"lm_reduction mean, {rec / statistics.mean(r['gn_lm_sum'] for r in rows):.3g} with sum")
    print(f"  alpha {cfg.msf.alpha:g} under 'mean' balances like alpha ~{cfg.msf.alpha * tokens:.4g} under 'sum'; "
          f"alpha {cfg.msf.alpha:g} under 'sum' like ~{cfg.msf.alpha / tokens:.4g} under 'mean'")


if __name__ == "__main__":
    main()
