"""Packed PT (`train_pack`) side by side with HF PEFT prompt tuning run one job at a time.

    python bench/peer_peft.py --model tiny-t5 --tasks 8 --lrs 0.03 0.1 0.3 1.0 --steps 50 --packs 1 8 32
    python bench/peer_peft.py --model smollm2-135m --data shared --tasks 2 --lrs 0.03 0.3 --steps 4 --packs 4
    python bench/peer_peft.py --arch bart-base --dtype bfloat16 --tasks 8 --lrs 0.01 0.1 --steps 50 --packs 1 16  # GPU

The same PT grid (tasks x learning rates), the same steps, batch size, prompt length L, dtype and
tokenized data, trained twice in one process on one backbone:
  peft    the way a PT grid runs without this project: for each job, wrap the backbone in
          `peft.get_peft_model(model, PromptTuningConfig(num_virtual_tokens=L))`, train N steps
          with torch AdamW (linear warm-up/decay, gradient clipping at 1.0), next job. Batches are
          the same epoch-shuffled draws of the task's training split, padded the same way.
  packed  `ipt_dist.train.packed.train_pack` on packs of K jobs (for each K in --packs).
Jobs/hour count training only (on both sides: the backbone is loaded once, outside the timing;
each PEFT job's model build is inside it, as is each pack's setup); our evaluation (one dev + test
pass, <= --eval-examples per job and split) is timed and reported apart. Reports jobs/hour of each
side and the ratio packed / peft per K. Needs torch, transformers and peft (no Ray, no MLflow).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.flops import dtype_note
from bench.realpath import BenchError, grid, load_data, timed_train_pack
from ipt_dist.config import BackboneConfig
from ipt_dist.modeling.backbone import build_backbone
from ipt_dist.train.packed import Job, PackSettings


def _batches(n: int, seed: int, batch_size: int, steps: int) -> list[list[int]]:
    """`steps` batches of indices into a split of n examples: epoch-shuffled, seeded by the job."""
    g, order, out = torch.Generator().manual_seed(seed), [], []
    for _ in range(steps):
        idx = []
        while len(idx) < batch_size:
            if not order:
                order = torch.randperm(n, generator=g).tolist()
            idx.append(order.pop(0))
        out.append(idx)
    return out


def peft_job(backbone, job: Job, task, args) -> float:
    """Train one PEFT prompt-tuning job; returns its mean training loss (read once, at the end)."""
    import peft
    from transformers import get_linear_schedule_with_warmup

    encdec = backbone.is_encoder_decoder
    pcfg = peft.PromptTuningConfig(task_type="SEQ_2_SEQ_LM" if encdec else "CAUSAL_LM",
                                   num_virtual_tokens=args.prompt_len, num_transformer_submodules=1)
    model = peft.get_peft_model(backbone.model, pcfg)
    model.train(False)  # dropout off, as on our side (backbone.dropout false)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=job.lr, weight_decay=0.0, eps=1e-8)
    sched = get_linear_schedule_with_warmup(opt, 0, args.steps)
    device = backbone.device
    total = torch.zeros((), device=device)
    split = task.train
    for idx in _batches(len(split), job.seed, args.batch_size, args.steps):
        batch = backbone.collate_train([split.inputs[i] for i in idx], [split.targets[i] for i in idx])
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, job.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        total += loss.detach()
    mean = float(total) / args.steps
    del model, opt
    return mean


def run_peft(backbone, jobs: list[Job], data, args) -> dict:
    sync = torch.cuda.synchronize if backbone.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    losses = [peft_job(backbone, j, data[j.task], args) for j in jobs]
    sync()
    secs = time.perf_counter() - t0
    return {"side": "peft", "K": 1, "jobs": len(jobs), "train_s": secs, "eval_s": None,
            "jobs_per_hour": 3600 * len(jobs) / secs, "mean_train_loss": sum(losses) / len(losses)}


def run_packed(backbone, jobs: list[Job], data, args, K: int) -> dict:
    settings = PackSettings(steps=args.steps, batch_size=args.batch_size, warmup_ratio=0.0, eval_every=args.steps,
                            init_std=0.02, eval_batch_size=32, eval_max_examples=args.eval_examples)
    train_s = eval_s = 0.0
    losses = []
    for s in range(0, len(jobs), K):
        r = timed_train_pack(backbone, jobs[s : s + K], data, settings, warmup=0, prompt_len=args.prompt_len)
        train_s, eval_s = train_s + r["train_s"], eval_s + r["eval_s"]
        losses += [res.loss_curve[-1][1] for res in r["results"]]
    return {"side": "packed", "K": K, "jobs": len(jobs), "train_s": train_s, "eval_s": eval_s,
            "jobs_per_hour": 3600 * len(jobs) / train_s, "mean_train_loss": sum(losses) / len(losses)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny-t5", help="tiny-* / smollm2-135m / a local checkpoint")
    p.add_argument("--arch", default=None, help="random weights of a named shape instead: bart-base, t5-large, ...")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--data", default="demo", help="demo | shared | a folder of tasks")
    p.add_argument("--tasks", type=int, default=4)
    p.add_argument("--lrs", type=float, nargs="+", default=[0.03, 0.3])
    p.add_argument("--steps", type=int, default=20, help="training steps per job")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=8)
    p.add_argument("--max-input-len", type=int, default=64)
    p.add_argument("--max-target-len", type=int, default=8)
    p.add_argument("--packs", type=int, nargs="+", default=[1, 8], help="pack sizes K of our side")
    p.add_argument("--eval-examples", type=int, default=2, help="our evaluation: examples per job and split")
    p.add_argument("--compile", action="store_true",
                   help="our side with backbone.compile (torch.compile of the training forward; PEFT stays eager)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    try:
        import peft  # noqa: F401
    except ImportError:
        print("error: bench/peer_peft.py needs peft (pip install peft, or the project's [test] extra)",
              file=sys.stderr)
        sys.exit(2)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backbone = build_backbone(BackboneConfig(name_or_path=args.model, arch=args.arch, dtype=args.dtype, dropout=False, num_beams=1,
                                             label_smoothing=0.0, max_new_tokens=8, max_input_len=args.max_input_len,
                                             max_target_len=args.max_target_len, compile=args.compile), device)
    try:
        data = load_data(backbone, args.data, args.tasks)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    jobs = grid("pt", data, args.lrs)
    dev_name = (torch.cuda.get_device_name() if device.type == "cuda"
                else f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"# packed PT vs PEFT one job at a time: {args.arch or args.model} ({args.dtype}), device {dev_name}; {len(jobs)} jobs "
          f"({len(data)} tasks of --data {args.data} x lrs {args.lrs}), {args.steps} steps x batch "
          f"{args.batch_size}, prompt L={args.prompt_len}", flush=True)
    note = dtype_note(args.dtype, device)
    if note:
        print(f"# {note}")
    # Untimed warm-up of both sides (first-call costs: kernels, allocator, PEFT's imports).
    warm = argparse.Namespace(**{**vars(args), "steps": 1})
    peft_job(backbone, jobs[0], data[jobs[0].task], warm)
    run_packed(backbone, jobs[:1], data, warm, 1)
    rows = [run_peft(backbone, jobs, data, args)]
    print(json.dumps(rows[-1]), flush=True)
    for K in args.packs:
        rows.append(run_packed(backbone, jobs, data, args, K))
        rows[-1]["ratio_vs_peft"] = rows[-1]["jobs_per_hour"] / rows[0]["jobs_per_hour"]
        print(json.dumps(rows[-1]), flush=True)
    best = max(rows[1:], key=lambda r: r["jobs_per_hour"]) if len(rows) > 1 else None
    print("\n| side | K | jobs | train (s) | jobs/hour | vs PEFT | our eval (s) | mean train loss |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['ratio_vs_peft']:.1f}x" if "ratio_vs_peft" in r else "1.0x"
        ev = f"{r['eval_s']:.1f}" if r["eval_s"] is not None else "-"
        print(f"| {r['side']} | {r['K']} | {r['jobs']} | {r['train_s']:.1f} | {r['jobs_per_hour']:.0f} | {ratio} | "
              f"{ev} | {r['mean_train_loss']:.3f} |")
    if best:
        print(f"# best: packed K={best['K']}, {best['ratio_vs_peft']:.1f}x the jobs/hour of PEFT one job at a time")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "device": dev_name, "dtype_note": note, "tasks": list(data), "rows": rows,
                       "best_K": best["K"] if best else None,
                       "best_ratio": best["ratio_vs_peft"] if best else None}, f, indent=1)


if __name__ == "__main__":
    main()
