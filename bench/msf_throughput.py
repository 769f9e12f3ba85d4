"""MSF training throughput per DeepSpeed ZeRO config and worker count, without Ray.

    DS_ACCELERATOR=cpu python bench/msf_throughput.py --model tiny-t5 --zero 0 2 3 --workers 1 2     # CPU
    python bench/msf_throughput.py --arch llama-1b --dtype bfloat16 --zero 2 3 --workers 1 --micro 8  # GPU

Each configuration starts `workers` processes (torch.multiprocessing; gloo on CPU, NCCL on
GPU) that build the frozen backbone, the prompt autoencoder and a DeepSpeed engine over the
autoencoder exactly as the Ray Train workers do (same MSFModel, same ds_configs/*.json), and
time optimiser steps on synthetic batches. Reports samples/s, tokens/s, step time, peak
memory, achieved model FLOP/s (bench/flops.py: 4 x non-embedding parameters x the tokens each
sees, encoder and decoder apart, + 4 x LM head x target tokens + attention, plus the autoencoder's
6 FLOPs per parameter per task prompt it reconstructs), `utilization` = achieved FLOP/s per worker
/ the best dense matmul rate of the same dtype measured by rank 0 on its device at the start of
the run, and, on a GPU in bf16, MFU against the datasheet peak. Each row also carries the FLOPs
of the formula used before 2026-12-02 (4 x all parameters, tied embedding included, x prompt +
attention-mask tokens; autoencoder per sample) and `old_over_new`, the factor by which that
overstated MFU.
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
    from bench.flops import (
        matmul_peak,
        mlp_shape,
        old_msf_flops,
        param_counts,
        prompt_net_flops,
        row_lengths,
        step_flops,
    )
    from bench.profile_split import profile_split
    from ipt_dist.distributed.deepspeed_config import build_ds_config
    from ipt_dist.modeling.autoencoder import PromptAutoencoder
    from ipt_dist.modeling.backbone import build_backbone, load_model_config
    from ipt_dist.train.steps import MSFModel

    cfg = _cfg(args, zero, world, micro)
    # The peak of this rank's device and thread count, before anything else runs on it.
    mm_peak = (matmul_peak(getattr(torch, args.dtype), device, mlp_shape(load_model_config(cfg.backbone)),
                           squares=args.peak_squares)
               if rank == 0 else None)
    dist.barrier()
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
    lengths = row_lengths(batch, args.prompt_len, backbone.is_encoder_decoder)
    tokens = int(lengths["enc"].sum() + lengths["dec"].sum())  # per rank per step, prompt included
    tasks = len(torch.unique(batch["group"]))
    flops = step_flops(backbone.model, lengths, param_counts(backbone.model))
    flops_rank = flops["total"] + prompt_net_flops(n_ae, tasks, trainable=True)  # per rank per step
    flops_old = old_msf_flops(backbone.model, lengths) + 6 * n_ae * micro
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

    def profiled(stop) -> None:
        for _ in range(args.profile):
            loss, _, _ = engine(batch)
            engine.backward(loss)
            engine.step()

    prof = None
    if args.profile and rank == 0:
        prof = profile_split(profiled, args.profile, gpu)
    elif args.profile:  # every rank takes the profiled steps: each one all-reduces gradients (rank 0 alone hung)
        profiled(None)
    peak = (torch.cuda.max_memory_allocated() / 2**30 if gpu
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    t = torch.tensor([peak], dtype=torch.float64)
    if gpu:
        t = t.to(device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if rank == 0:
        dev = torch.cuda.get_device_name() if gpu else "cpu"
        datasheet = next((v for k, v in PEAK_BF16.items() if k in dev), None) if args.dtype == "bfloat16" else None
        per_rank = flops_rank / step  # FLOP/s of one worker
        with open(out_file, "w") as f:
            json.dump({"zero": zero, "workers": world, "micro": micro, "step_s": step,
                       "samples_per_s": micro * world / step, "tokens_per_s": tokens * world / step,
                       "tokens_per_step": tokens, "peak_mem_gib": float(t.item()),
                       "model_tflops": per_rank * world / 1e12, "utilization": per_rank / (mm_peak["gflops"] * 1e9),
                       "peak_gflops": mm_peak["gflops"], "matmul_peak": mm_peak,
                       "mfu": per_rank / datasheet if datasheet else None,
                       "flops_per_step": {**flops, "autoencoder": flops_rank - flops["total"]},
                       "model_tflops_old_formula": flops_old * world / step / 1e12,
                       "old_over_new": flops_old / flops_rank,
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
    p.add_argument("--peak-squares", type=int, nargs="+", default=None,
                   help="square matmul sizes of the peak measurement (default CPU 512 1024 2048, GPU 2048 4096 8192)")
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
    from bench.flops import dtype_note

    note = dtype_note(args.dtype, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if note:
        print(f"# {note}")
    if rows:
        print("# measured " + args.dtype + " matmul peak (rank 0): " + ", ".join(
            f"workers={r['workers']} {r['peak_gflops']:.1f} GFLOP/s" for r in rows if r["zero"] == rows[0]["zero"]
            and r["micro"] == rows[0]["micro"]))
    print("| ZeRO | workers | micro | step (s) | samples/s | tokens/s | peak mem (GiB) | model TFLOP/s | utilization "
          "| MFU (datasheet) | old formula / new |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] else "-"
        print(f"| {r['zero']} | {r['workers']} | {r['micro']} | {r['step_s']:.3f} | {r['samples_per_s']:.1f} | "
              f"{r['tokens_per_s']:.0f} | {r['peak_mem_gib']:.2f} | {r['model_tflops']:.4f} | "
              f"{100 * r['utilization']:.1f}% | {mfu} | {r['old_over_new']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "dtype_note": note, "rows": rows}, f, indent=1)


def _print_profile(r: dict) -> None:
    from bench.profile_split import format_split

    print(format_split(r["profile"], f"ZeRO-{r['zero']} workers={r['workers']} micro={r['micro']} (rank 0)"))


if __name__ == "__main__":
    main()
