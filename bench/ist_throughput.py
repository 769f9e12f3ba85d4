"""IST training throughput vs pack size K, measured side by side in one process.

    python bench/ist_throughput.py --model tiny-t5 --packs 1 4 16 64            # CPU, seconds
    python bench/ist_throughput.py --arch bart-base --dtype bfloat16 --packs 1 4 16 64 256   # GPU

One backbone copy trains K IST jobs at once (each row carries its own Dec(z_k); per-job
loss, optimiser, lr and clipping). For each K the same per-job batch is used, so the step
does K times the work of K=1; the question is how much faster than K separate steps it is.
Reports per K: step time, job-steps/s, jobs/hour (for --job-steps steps per job, training
only), training tokens/s, peak memory, and the speed-up over K=1 measured in this run.
Needs torch + transformers only (no Ray, no DeepSpeed, no MLflow).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing (e.g. on a GPU box)
    sys.path.insert(0, str(ROOT))

from ipt_dist.config import BackboneConfig
from ipt_dist.modeling.autoencoder import PromptAutoencoder
from ipt_dist.modeling.backbone import build_backbone
from ipt_dist.train.optim import BatchedAdamW
from ipt_dist.train.steps import ist_step


def synthetic_batch(backbone, K: int, batch_size: int, in_len: int, tgt_len: int, seed: int = 0) -> dict:
    """K jobs x batch_size rows of random tokens (fixed lengths: a throughput, not quality, test)."""
    g = torch.Generator().manual_seed(seed)
    vocab = min(len(backbone.tokenizer), backbone.model.config.vocab_size)
    low = 4  # skip special ids
    inputs = torch.randint(low, vocab, (K * batch_size, in_len), generator=g).tolist()
    targets = [t + [backbone.eos_id] for t in torch.randint(low, vocab, (K * batch_size, tgt_len - 1), generator=g).tolist()]
    batch = backbone.collate_train(inputs, targets)
    batch["group"] = torch.arange(K).repeat_interleave(batch_size)
    return batch


def measure(backbone, decoder, K: int, args, device) -> dict:
    batch = {k: v.to(device) for k, v in synthetic_batch(backbone, K, args.batch_size, args.input_len,
                                                         args.target_len).items()}
    z = (torch.randn(K, decoder.d, device=device) * 0.02).requires_grad_(True)
    opt = BatchedAdamW(z, [1e-3] * K, [0.1] * K)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        ist_step(backbone, decoder, z, opt, batch, 1.0, args.max_rows)
    sync()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        ist_step(backbone, decoder, z, opt, batch, 1.0, args.max_rows)
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    step = times[len(times) // 2]  # median
    tokens = int(batch["attention_mask"].sum()) + K * args.batch_size * decoder.prompt_len
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process max RSS, GiB
    return {"K": K, "step_s": step, "job_steps_per_s": K / step, "jobs_per_hour": 3600 * K / (step * args.job_steps),
            "tokens_per_s": tokens / step, "peak_mem_gib": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny-t5", help="hub name / local path / tiny-* / smollm2-135m")
    p.add_argument("--arch", default=None, help="random-initialised architecture shape, e.g. bart-base, llama-1b")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--packs", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--batch-size", type=int, default=4, help="rows per job per step (reference IST: 4)")
    p.add_argument("--input-len", type=int, default=64)
    p.add_argument("--target-len", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=100)
    p.add_argument("--d", type=int, default=50)
    p.add_argument("--steps", type=int, default=10, help="timed steps per K (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--job-steps", type=int, default=1000, help="steps per IST job, for jobs/hour")
    p.add_argument("--max-rows", type=int, default=None, help="forward chunk size (rows) for large packs")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backbone = build_backbone(BackboneConfig(name_or_path=args.model, arch=args.arch, dtype=args.dtype,
                                             dropout=False), device)
    torch.manual_seed(0)
    decoder = PromptAutoencoder(args.d, args.prompt_len, backbone.hidden_size).decoder.to(device).requires_grad_(False)
    name = args.arch or args.model
    dev_name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"# IST throughput: backbone {name} ({backbone.num_parameters() / 1e6:.1f}M params, {args.dtype}), "
          f"device {dev_name}")
    print(f"# per job: batch {args.batch_size}, input {args.input_len}, target {args.target_len}, "
          f"prompt L={args.prompt_len}, d={args.d}; jobs/hour assumes {args.job_steps} training steps per job")
    rows = []
    for K in args.packs:
        try:
            r = measure(backbone, decoder, K, args, device)
        except torch.OutOfMemoryError:
            print(f"K={K}: out of memory, stopping")
            break
        rows.append(r)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    base = rows[0]["job_steps_per_s"] if rows and rows[0]["K"] == 1 else None
    print("\n| K | step (s) | job-steps/s | jobs/hour | tokens/s | peak mem (GiB) | vs K=1 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['job_steps_per_s'] / base:.1f}x" if base else "-"
        print(f"| {r['K']} | {r['step_s']:.4f} | {r['job_steps_per_s']:.1f} | {r['jobs_per_hour']:.0f} | "
              f"{r['tokens_per_s']:.0f} | {r['peak_mem_gib']:.2f} | {ratio} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "device": dev_name, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
