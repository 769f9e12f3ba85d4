"""PT / IST training throughput vs pack size K, with utilization against the measured matmul peak.

    python bench/ist_throughput.py --model tiny-t5 --packs 1 4 16 64                       # synthetic batch
    python bench/ist_throughput.py --mode real --model tiny-t5 --kinds pt ist --packs 1 16  # train_pack itself
    python bench/ist_throughput.py --mode real --model smollm2-135m --data shared --packs 1 4 --steps 3 --warmup 1
    python bench/ist_throughput.py --arch bart-base --dtype bfloat16 --packs 1 4 16 64 256 # GPU

Two modes, one table:
  synthetic  one fixed random-token batch per K, collated once, timed through `ist_step` (the
             step alone: no data path, no evaluation).
  real       `ipt_dist.train.packed.train_pack` itself on real tokenized tasks (`--data demo`: the
             project's synthetic demo tasks; `shared`: ../shared/data/tasks; or a folder), for PT
             and IST: it samples, collates and moves every step's batch, keeps per-job losses and
             evaluates. Evaluation (one dev + one test pass, greedy, capped at --eval-examples per
             job and split) is timed and reported apart from training.
K jobs share one backbone pass (each row carries its own prompt P_k or Dec(z_k); per-job loss,
optimiser, lr and clipping). Per K: step time (median of timed steps, synthetic; mean of the
steps after --warmup, real), jobs/hour (training only, --job-steps steps per job), tokens/s,
achieved model TFLOP/s (bench/flops.py: non-embedding parameters x tokens x 4 + LM head x target
tokens x 4 + attention), `utilization` = that / the best dense matmul rate of the same dtype
measured on the same device at the start of this run, the padding share, and peak memory.
`--profile N` profiles N more steps of the best row: matmul / attention / elementwise / host-other.
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

from bench.flops import (
    dtype_note,
    matmul_peak,
    mlp_shape,
    padded_tokens,
    param_counts,
    prompt_net_flops,
    row_lengths,
    step_flops,
)
from bench.profile_split import format_split, profile_split
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


def _peak_mem(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process max RSS, GiB


def _row(K: int, kind: str, step: float, flops: float, tokens: int, positions: int, args, peak_gflops: float,
         device) -> dict:
    """The common fields of a result row from one step's time, FLOPs, real tokens and padded positions."""
    achieved = flops / step
    return {"K": K, "kind": kind, "step_s": step, "job_steps_per_s": K / step,
            "jobs_per_hour": 3600 * K / (step * args.job_steps), "tokens_per_s": tokens / step,
            "model_tflops": achieved / 1e12, "utilization": achieved / (peak_gflops * 1e9),
            "pad_share": 1 - tokens / positions if positions else 0.0, "flops_per_step": flops,
            "peak_mem_gib": _peak_mem(device)}


def measure_synthetic(backbone, decoder, K: int, args, device, counts: dict, peak: float) -> tuple[dict, callable]:
    batch = {k: v.to(device) for k, v in synthetic_batch(backbone, K, args.batch_size, args.input_len,
                                                         args.target_len).items()}
    z = (torch.randn(K, decoder.d, device=device) * 0.02).requires_grad_(True)
    opt = BatchedAdamW(z, [1e-3] * K, [0.1] * K)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step() -> None:
        ist_step(backbone, decoder, z, opt, batch, 1.0, args.max_rows)

    def profiled(stop) -> None:  # --profile
        for _ in range(args.profile):
            step()

    for _ in range(args.warmup):
        step()
    sync()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    L, encdec = decoder.prompt_len, backbone.is_encoder_decoder
    lengths = row_lengths(batch, L, encdec)
    flops = step_flops(backbone.model, lengths, counts)["total"] + prompt_net_flops(
        sum(p.numel() for p in decoder.parameters()), K, trainable=False)
    tokens = int(lengths["enc"].sum() + lengths["dec"].sum())
    row = _row(K, "ist", times[len(times) // 2], flops, tokens, padded_tokens(batch, L, encdec), args, peak, device)
    return row, profiled


def measure_real(backbone, decoder, kind: str, K: int, args, data, device, counts: dict, peak: float
                 ) -> tuple[dict, callable]:
    from bench.realpath import eval_examples, grid, timed_train_pack
    from ipt_dist.train.packed import PackSettings

    jobs = grid(kind, data, args.lrs, n_jobs=K)
    settings = PackSettings(steps=args.steps, batch_size=args.batch_size, warmup_ratio=0.0, eval_every=args.steps,
                            max_rows=args.max_rows, length_buckets=args.length_buckets,
                            eval_batch_size=args.eval_batch_size, eval_max_examples=args.eval_examples)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    ist = kind == "ist"
    r = timed_train_pack(backbone, jobs, data, settings, warmup=args.warmup, decoder=decoder if ist else None,
                         prompt_len=None if ist else args.prompt_len)
    timed = range(args.warmup, args.steps)
    dec_flops = prompt_net_flops(sum(p.numel() for p in decoder.parameters()), K, trainable=False) if ist else 0.0
    flops = sum(step_flops(backbone.model, r["lengths"][i], counts)["total"] + dec_flops for i in timed)
    tokens = sum(int(r["lengths"][i]["enc"].sum() + r["lengths"][i]["dec"].sum()) for i in timed)
    positions = sum(r["positions"][i] for i in timed)
    n = len(timed)
    row = _row(K, kind, r["steady_s"] / n, flops / n, tokens // n, positions // n, args, peak, device)
    n_eval = eval_examples(jobs, data, args.eval_examples)
    row.update(forwards_per_step=sum(r["chunks"][i] for i in timed) / n, length_buckets=args.length_buckets,
               train_s=r["train_s"], first_steps_s=r["train_s"] - r["steady_s"], eval_s=r["eval_s"],
               eval_examples=n_eval, eval_examples_per_s=n_eval / r["eval_s"] if r["eval_s"] > 0 else None)

    def profiled(stop) -> None:  # --profile: the same pack again for --profile steps; profiling stops before eval
        n = args.profile
        timed_train_pack(backbone, jobs, data, PackSettings(**{**vars(settings), "steps": n, "eval_every": n,
                                                               "eval_max_examples": 1}), warmup=0,
                         decoder=decoder if ist else None, prompt_len=None if ist else args.prompt_len,
                         on_trained=stop)
    return row, profiled


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", default="synthetic", choices=["synthetic", "real"])
    p.add_argument("--model", default="tiny-t5", help="hub name / local path / tiny-* / smollm2-135m")
    p.add_argument("--arch", default=None, help="random-initialised architecture shape, e.g. bart-base, llama-1b")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--packs", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--batch-size", type=int, default=4, help="rows per job per step (reference IST: 4)")
    p.add_argument("--input-len", type=int, default=64, help="synthetic: input tokens; real: max_input_len")
    p.add_argument("--target-len", type=int, default=8, help="synthetic: target tokens; real: max_target_len")
    p.add_argument("--prompt-len", type=int, default=100)
    p.add_argument("--d", type=int, default=50)
    p.add_argument("--mid-dim", type=int, default=768, help="the IST decoder's hidden width")
    p.add_argument("--steps", type=int, default=10, help="timed steps per K (synthetic); all steps (real)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before (synthetic) / at the start (real)")
    p.add_argument("--job-steps", type=int, default=1000, help="steps per job, for jobs/hour")
    p.add_argument("--max-rows", type=int, default=None, help="forward chunk size (rows) for large packs")
    p.add_argument("--compile", action="store_true",
                   help="backbone.compile: torch.compile the training forward (compiles in the --warmup steps)")
    p.add_argument("--length-buckets", type=int, default=1,
                   help="real mode: the most length buckets a step's rows are cut into (1: pad to the step's longest)")
    p.add_argument("--kinds", nargs="+", default=["pt", "ist"], choices=["pt", "ist"], help="real mode")
    p.add_argument("--data", default="demo", help="real mode: demo | shared | a folder of tasks")
    p.add_argument("--tasks", type=int, default=4, help="real mode: tasks (jobs cycle over tasks x --lrs)")
    p.add_argument("--lrs", type=float, nargs="+", default=[0.03, 0.3], help="real mode: learning rates")
    p.add_argument("--eval-examples", type=int, default=8, help="real mode: examples per job and split evaluated")
    p.add_argument("--eval-batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=8, help="real mode: greedy decoding length")
    p.add_argument("--profile", type=int, default=0, metavar="STEPS",
                   help="profile this many more training steps of the row with the best utilization")
    p.add_argument("--peak-squares", type=int, nargs="+", default=None,
                   help="square matmul sizes of the peak measurement (default CPU 512 1024 2048, GPU 2048 4096 8192)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()

    from bench.realpath import BenchError, load_data

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    real = args.mode == "real"
    bcfg = BackboneConfig(name_or_path=args.model, arch=args.arch, dtype=args.dtype, dropout=False, num_beams=1,
                          label_smoothing=0.0, max_new_tokens=args.max_new_tokens, compile=args.compile,
                          **({"max_input_len": args.input_len, "max_target_len": args.target_len} if real else {}))
    backbone = build_backbone(bcfg, device)
    counts = param_counts(backbone.model)
    torch.manual_seed(0)
    decoder = PromptAutoencoder(args.d, args.prompt_len, backbone.hidden_size, args.mid_dim).decoder.to(device)
    decoder.requires_grad_(False)
    name = args.arch or args.model
    dev_name = (torch.cuda.get_device_name() if device.type == "cuda"
                else f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    peak = matmul_peak(backbone.dtype, device, mlp_shape(backbone.model.config), squares=args.peak_squares)
    print(f"# {args.mode} PT/IST throughput: backbone {name} ({backbone.num_parameters() / 1e6:.1f}M params, "
          f"{args.dtype}; non-embedding {(counts.get('body') or counts['encoder'] + counts['decoder'] + counts['cross_kv']) / 1e6:.1f}M), "
          f"device {dev_name}")
    note = dtype_note(args.dtype, device)
    if note:
        print(f"# {note}")
    print(f"# measured {args.dtype} matmul peak: {peak['gflops']:.1f} GFLOP/s (best of "
          + ", ".join(f"{s['m']}x{s['k']}x{s['n']} {s['gflops']:.1f}" for s in peak["shapes"]) + ")")
    try:
        data = load_data(backbone, args.data, args.tasks) if real else None
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if real:
        print(f"# real path: train_pack on {len(data)} tasks of --data {args.data} ({', '.join(data)}); per job: "
              f"batch {args.batch_size}, max input {args.input_len}, max target {args.target_len}, prompt "
              f"L={args.prompt_len}, IST d={args.d}; {args.steps} steps ({args.warmup} untimed), then one dev + "
              f"test evaluation of <= {args.eval_examples} examples per job and split")
    else:
        print(f"# per job: batch {args.batch_size}, input {args.input_len}, target {args.target_len}, "
              f"prompt L={args.prompt_len}, d={args.d}")
    print(f"# jobs/hour assumes {args.job_steps} training steps per job (evaluation excluded)")
    rows, steppers = [], []
    for kind in (args.kinds if real else ["ist"]):
        for K in args.packs:
            try:
                if real:
                    r, stepper = measure_real(backbone, decoder, kind, K, args, data, device, counts, peak["gflops"])
                else:
                    r, stepper = measure_synthetic(backbone, decoder, K, args, device, counts, peak["gflops"])
            except torch.OutOfMemoryError:
                print(f"{kind} K={K}: out of memory, stopping")
                break
            rows.append(r)
            steppers.append(stepper)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    profile = None
    if args.profile and rows:
        best = max(range(len(rows)), key=lambda i: rows[i]["utilization"])
        profile = profile_split(steppers[best], args.profile, device.type == "cuda")
        profile["row"] = {"K": rows[best]["K"], "kind": rows[best]["kind"]}
    print_table(rows, real)
    if profile:
        print(format_split(profile, f"{profile['row']['kind']} K={profile['row']['K']}"
                           + (" (train_pack's training steps; its evaluation is not profiled)" if real else "")))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "device": dev_name, "dtype_note": note, "mode": args.mode, "peak": peak,
                       "param_counts": counts, "rows": rows, "profile": profile}, f, indent=1)


def print_table(rows: list[dict], real: bool) -> None:
    extra = " eval (s) | eval ex/s |" if real else ""
    print(f"\n| kind | K | step (s) | job-steps/s | jobs/hour | tokens/s | model TFLOP/s | utilization | padding "
          f"| peak mem (GiB) | vs K=1 |{extra}")
    print("|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if real else ""))
    for r in rows:
        base = next((b["job_steps_per_s"] for b in rows if b["K"] == 1 and b["kind"] == r["kind"]), None)
        ratio = f"{r['job_steps_per_s'] / base:.1f}x" if base else "-"
        tail = (f" {r['eval_s']:.2f} | {r['eval_examples_per_s']:.1f} |" if real else "")
        print(f"| {r['kind']} | {r['K']} | {r['step_s']:.4f} | {r['job_steps_per_s']:.1f} | {r['jobs_per_hour']:.0f} | "
              f"{r['tokens_per_s']:.0f} | {r['model_tflops']:.4f} | {100 * r['utilization']:.1f}% | "
              f"{100 * r['pad_share']:.0f}% | {r['peak_mem_gib']:.2f} | {ratio} |{tail}")


if __name__ == "__main__":
    main()
