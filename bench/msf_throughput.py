"""MSF training throughput per DeepSpeed ZeRO config and worker count, without Ray.

    DS_ACCELERATOR=cpu python bench/msf_throughput.py --model tiny-t5 --zero 0 2 3 --workers 1 2     # CPU
    python bench/msf_throughput.py --arch llama-1b --dtype bfloat16 --zero 2 3 --workers 1 --micro 8  # GPU

Each configuration starts `workers` processes (torch.multiprocessing; gloo on CPU, NCCL on
GPU) that build the frozen backbone, the prompt autoencoder and a DeepSpeed engine over the
autoencoder exactly as the Ray Train workers do (same MSFModel, same ds_configs/*.json), and
time optimiser steps on synthetic batches. Reports samples/s, tokens/s, step time, peak
memory, achieved model FLOP/s (about 4N FLOPs per token for a frozen N-parameter backbone:
forward 2N + activation-gradient backward 2N, plus the autoencoder's 6 FLOPs per parameter
per sample) and, on a GPU, MFU against the device's dense bf16 peak.
Needs torch, transformers and deepspeed (no Ray, no MLflow).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing (e.g. on a GPU box)
    sys.path.insert(0, str(ROOT))

# Dense bf16 peaks (datasheet, no sparsity): MFU denominators.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cfg(args, zero: int, world: int, micro: int):
    from ipt_dist.config import load_config

    global_batch = micro * world
    return load_config(None, [
        f"backbone.name_or_path={args.model}", f"backbone.dtype={args.dtype}", "backbone.dropout=false",
        *( [f"backbone.arch={args.arch}"] if args.arch else []),
        f"pt.prompt_len={args.prompt_len}", f"msf.d={args.d}", f"msf.batch_size={global_batch}",
        f"msf.steps={args.steps + args.warmup}", "msf.warmup_ratio=0.0", "msf.grad_clip=1.0",
        f"distributed.num_workers={world}", f"distributed.micro_batch_size={micro}",
        f"distributed.ds_config={ROOT / 'ds_configs' / f'zero{zero}.json'}",
        f"distributed.use_gpu={'true' if torch.cuda.is_available() else 'false'}",
    ])


# Profiled ops by what they do, matched on the op name (first match wins).
CATEGORIES = [
    ("communication", ("nccl", "gloo", "all_reduce", "allreduce", "all_gather", "allgather", "reduce_scatter",
                       "broadcast", "c10d")),
    ("attention", ("attention", "sdpa", "flash", "softmax", "_efficient")),
    ("matmul", ("mm", "matmul", "linear", "gemm", "addmm", "bmm", "baddbmm", "einsum")),
    ("optimizer", ("adam", "_foreach", "optimizer")),
]


def _profile(engine, batch, steps: int, gpu: bool) -> dict:
    """Profile `steps` more training steps on this rank: each op's self time (device time on a
    GPU, CPU time otherwise) grouped into matmul / attention / communication / optimizer / other,
    the device-busy share of wall time (low means launch- or host-bound) and the top ops."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    if gpu:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        for _ in range(steps):
            loss, _, _ = engine(batch)
            engine.backward(loss)
            engine.step()
        if gpu:
            torch.cuda.synchronize()
    wall_us = (time.perf_counter() - t0) * 1e6
    ops = []
    for e in prof.key_averages():
        if gpu:
            if e.device_type != DeviceType.CPU:
                continue  # kernels are counted through the ops that launched them
            us = getattr(e, "self_device_time_total", None)
            us = us if us is not None else getattr(e, "self_cuda_time_total", 0)
        else:
            us = e.self_cpu_time_total
        if us > 0:
            ops.append((e.key, float(us), int(e.count)))
    total = sum(us for _, us, _ in ops) or 1.0
    shares: dict[str, float] = {}
    for name, us, _ in ops:
        low = name.lower()
        cat = next((c for c, keys in CATEGORIES if any(k in low for k in keys)), "other")
        shares[cat] = shares.get(cat, 0.0) + us / total
    top = sorted(ops, key=lambda o: -o[1])[:15]
    return {"steps": steps, "busy_share": total / wall_us if gpu else None, "shares": shares,
            "top": [{"op": n, "self_ms_per_step": us / 1e3 / steps, "share": us / total, "calls": c}
                    for n, us, c in top]}


def _worker(rank: int, world: int, port: int, args, zero: int, micro: int, out_file: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    gpu = torch.cuda.is_available()
    if not gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    import deepspeed
    import torch.distributed as dist

    dist.init_process_group("nccl" if gpu else "gloo", rank=rank, world_size=world)
    device = torch.device("cuda", rank) if gpu else torch.device("cpu")
    if gpu:
        torch.cuda.set_device(device)
    deepspeed.init_distributed(dist_backend=dist.get_backend(), dist_init_required=False, verbose=False)
    from ipt_dist.distributed.deepspeed_config import build_ds_config
    from ipt_dist.modeling.autoencoder import PromptAutoencoder
    from ipt_dist.modeling.backbone import build_backbone
    from ipt_dist.train.steps import MSFModel

    cfg = _cfg(args, zero, world, micro)
    ds = build_ds_config(cfg, world)
    hf_ds = None
    if zero == 3:
        from transformers.integrations import HfDeepSpeedConfig

        hf_ds = HfDeepSpeedConfig(ds)  # noqa: F841 - keeps zero.Init active for model creation
        backbone = build_backbone(cfg.backbone)
    else:
        backbone = build_backbone(cfg.backbone, device)
    H = backbone.hidden_size
    n_backbone = sum(getattr(p, "ds_numel", p.numel()) for p in backbone.model.parameters())
    T = 8  # tasks
    prompts = torch.randn(T, args.prompt_len, H, generator=torch.Generator().manual_seed(0)).to(device) * 0.02
    torch.manual_seed(0)
    ae = PromptAutoencoder(args.d, args.prompt_len, H, args.mid_dim)
    n_ae = sum(p.numel() for p in ae.parameters())
    model = MSFModel(backbone, ae if zero == 3 else ae.to(device), prompts, alpha=1.0)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=[p for p in model.parameters()
                                                                           if p.requires_grad], config=ds,
                                           dist_init_required=False)
    g = torch.Generator().manual_seed(rank)
    vocab = min(len(backbone.tokenizer), backbone.model.config.vocab_size)
    inputs = torch.randint(4, vocab, (micro, args.input_len), generator=g).tolist()
    targets = [t + [backbone.eos_id] for t in torch.randint(4, vocab, (micro, args.target_len - 1),
                                                                 generator=g).tolist()]
    batch = backbone.collate_train(inputs, targets)
    batch["group"] = torch.arange(micro) % T
    batch = {k: v.to(device) for k, v in batch.items()}
    tokens = int(batch["attention_mask"].sum()) + micro * args.prompt_len  # per rank per step
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(args.warmup + args.steps):
        if gpu:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss, _, _ = engine(batch)
        engine.backward(loss)
        engine.step()
        if gpu:
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    prof = _profile(engine, batch, args.profile, gpu) if args.profile and rank == 0 else None
    peak = (torch.cuda.max_memory_allocated() / 2**30 if gpu
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    t = torch.tensor([peak], dtype=torch.float64)
    if gpu:
        t = t.to(device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if rank == 0:
        tok_s = tokens * world / step
        flops = 4 * n_backbone * tok_s + 6 * n_ae * micro * world / step
        dev = torch.cuda.get_device_name() if gpu else "cpu"
        peak_flops = next((v for k, v in PEAK_BF16.items() if k in dev), None) if args.dtype == "bfloat16" else None
        measured = args.peak_tflops * 1e12 if args.peak_tflops else None
        with open(out_file, "w") as f:
            json.dump({"zero": zero, "workers": world, "micro": micro, "step_s": step,
                       "samples_per_s": micro * world / step, "tokens_per_s": tok_s, "tokens_per_step": tokens,
                       "peak_mem_gib": float(t.item()), "model_tflops": flops / 1e12,
                       "mfu": flops / world / peak_flops if peak_flops else None,
                       "mfu_measured_peak": flops / world / measured if measured else None,
                       "backbone_params": n_backbone, "ae_params": n_ae, "device": dev, "profile": prof}, f)
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny-t5")
    p.add_argument("--arch", default=None, help="random weights of a named shape: bart-base, t5-large, llama-1b, ...")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--zero", type=int, nargs="+", default=[0, 2, 3])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--micro", type=int, nargs="+", default=[8], help="micro-batch(es) per worker")
    p.add_argument("--input-len", type=int, default=64)
    p.add_argument("--target-len", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=100)
    p.add_argument("--d", type=int, default=250)
    p.add_argument("--mid-dim", type=int, default=768)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--profile", type=int, default=0, metavar="STEPS",
                   help="after timing, profile this many steps on rank 0: time by op category and top ops")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="also report MFU against this peak (e.g. a bf16 matmul rate measured on the device)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    rows = []
    for world in args.workers:
        if torch.cuda.is_available() and world > torch.cuda.device_count():
            print(f"workers={world}: only {torch.cuda.device_count()} GPU(s), skipped")
            continue
        for zero in args.zero:
            for micro in args.micro:
                with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
                    out = f.name
                try:
                    mp.spawn(_worker, args=(world, _free_port(), args, zero, micro, out), nprocs=world, join=True)
                except Exception as exc:  # noqa: BLE001 - e.g. out of memory at a large micro-batch
                    print(f"ZeRO-{zero} workers={world} micro={micro}: failed ({str(exc).strip().splitlines()[-1]})")
                    continue
                with open(out) as f:
                    r = json.load(f)
                os.unlink(out)
                rows.append(r)
                print(json.dumps({k: v for k, v in r.items() if k != "profile"}), flush=True)
    name = args.arch or args.model
    for r in rows:
        if r.get("profile"):
            _print_profile(r)
    print(f"\n# MSF throughput: {name}, {args.dtype}, input {args.input_len}, target {args.target_len}, "
          f"L={args.prompt_len}, d={args.d}, device {rows[0]['device'] if rows else '?'}")
    print("| ZeRO | workers | micro | step (s) | samples/s | tokens/s | peak mem (GiB) | model TFLOP/s | MFU "
          "| MFU vs measured peak |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] else "-"
        mfu_m = f"{100 * r['mfu_measured_peak']:.1f}%" if r.get("mfu_measured_peak") else "-"
        print(f"| {r['zero']} | {r['workers']} | {r['micro']} | {r['step_s']:.3f} | {r['samples_per_s']:.1f} | "
              f"{r['tokens_per_s']:.0f} | {r['peak_mem_gib']:.2f} | {r['model_tflops']:.3f} | {mfu} | {mfu_m} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


def _print_profile(r: dict) -> None:
    pr = r["profile"]
    busy = f", device busy {100 * pr['busy_share']:.0f}% of wall" if pr["busy_share"] is not None else ""
    shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(pr["shares"].items(), key=lambda kv: -kv[1]))
    print(f"\n# profile ZeRO-{r['zero']} workers={r['workers']} micro={r['micro']} ({pr['steps']} steps, rank 0"
          f"{busy}): {shares}")
    print("| op | self ms/step | share | calls |")
    print("|---|---|---|---|")
    for o in pr["top"]:
        print(f"| {o['op']} | {o['self_ms_per_step']:.2f} | {100 * o['share']:.1f}% | {o['calls']} |")


if __name__ == "__main__":
    main()
