#!/usr/bin/env bash
# Every GPU row of BENCHMARKS.md in one script, for a lent GPU box (torch + transformers, no Ray,
# no network). Run from the repo root there; results land in $OUT (or ./out):
#     bash bench/gpu_suite.sh ist     # peak bf16 matmul, IST packing curves: bart-base, t5-large  (~5 min)
#     bash bench/gpu_suite.sh real    # train_pack itself (PT + IST, bart-base bf16), utilization, profile (~3 min)
#     bash bench/gpu_suite.sh peft    # packed PT vs HF PEFT one job at a time, bart-base bf16     (~3 min)
#     bash bench/gpu_suite.sh msf     # MSF llama-1b ZeRO-2/3, micro-batches, profile              (~8 min)
# Every throughput row carries `utilization`: achieved model FLOP/s (bench/flops.py) over the best
# bf16 matmul rate the bench measures on the device at its start. `msf` needs DeepSpeed and `peft`
# needs peft + accelerate: make .whl here first (bash bench/gpu_wheels.sh) and carry it along.
set -uo pipefail
part=${1:-ist}
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} || exit 1
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/nvidia_smi.csv"
$PY - <<'EOF' | tee "$OUT/env.txt"
import platform, torch, transformers
print("python", platform.python_version(), "torch", torch.__version__, "transformers", transformers.__version__,
      "cuda", torch.version.cuda, "device", torch.cuda.get_device_name())
try:
    import deepspeed
    print("deepspeed", deepspeed.__version__)
except Exception as exc:  # noqa: BLE001
    print("deepspeed: not importable:", exc)
EOF
# Measured bf16 matmul rate (8192^3, random data, median of 20 after 5 warm-ups): the MFU ceiling.
PEAK=$($PY - <<'EOF'
import torch
a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
for _ in range(5):
    a @ b
torch.cuda.synchronize()
ts = []
for _ in range(20):
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record(); a @ b; e.record(); torch.cuda.synchronize()
    ts.append(s.elapsed_time(e) / 1e3)
ts.sort()
print(f"{2 * 8192**3 / ts[len(ts) // 2] / 1e12:.0f}")
EOF
)
echo "measured bf16 matmul: ${PEAK} TFLOP/s" | tee "$OUT/peak.txt"

if [ "$part" = ist ] || [ "$part" = all ]; then
  $PY bench/ist_throughput.py --arch bart-base --dtype bfloat16 --packs 1 4 16 64 256 --prompt-len 100 --d 250 \
    --steps 10 --warmup 3 --profile 3 --json "$OUT/ist_bart_base.json" 2>&1 | tee "$OUT/ist_bart_base.log"
  $PY bench/ist_throughput.py --arch t5-large --dtype bfloat16 --packs 1 4 16 64 --prompt-len 100 --d 250 \
    --steps 10 --warmup 3 --json "$OUT/ist_t5_large.json" 2>&1 | tee "$OUT/ist_t5_large.log"
fi
if [ "$part" = real ] || [ "$part" = all ]; then
  # The real path: train_pack on the demo tasks (tokenized by the arch's stand-in tokenizer), PT and IST,
  # evaluation timed apart, a profile split of the best row.
  $PY bench/ist_throughput.py --mode real --arch bart-base --dtype bfloat16 --data demo --tasks 8 --kinds pt ist \
    --packs 1 16 64 256 --steps 20 --warmup 3 --prompt-len 100 --d 250 --input-len 256 --target-len 64 \
    --eval-examples 4 --profile 3 --json "$OUT/real_bart_base.json" 2>&1 | tee "$OUT/real_bart_base.log"
  # The same PT packs with length buckets and with backbone.compile (compiling happens in the warmup steps).
  $PY bench/ist_throughput.py --mode real --arch bart-base --dtype bfloat16 --data demo --tasks 8 --kinds pt \
    --packs 64 256 --steps 20 --warmup 3 --prompt-len 100 --input-len 256 --target-len 64 --eval-examples 1 \
    --length-buckets 4 --json "$OUT/real_bart_base_buckets.json" 2>&1 | tee "$OUT/real_bart_base_buckets.log"
  $PY bench/ist_throughput.py --mode real --arch bart-base --dtype bfloat16 --data demo --tasks 8 --kinds pt \
    --packs 64 256 --steps 20 --warmup 6 --prompt-len 100 --input-len 256 --target-len 64 --eval-examples 1 \
    --compile --json "$OUT/real_bart_base_compile.json" 2>&1 | tee "$OUT/real_bart_base_compile.log"
fi
if [ "$part" = peft ] || [ "$part" = all ]; then
  # 64 PT jobs (8 demo tasks x 8 lrs) x 50 steps: PEFT one job at a time vs packs of K (target >= 20x).
  $PY bench/peer_peft.py --arch bart-base --dtype bfloat16 --data demo --tasks 8 \
    --lrs 0.01 0.02 0.05 0.1 0.2 0.5 1.0 2.0 --steps 50 --packs 1 16 64 --prompt-len 100 --max-input-len 256 \
    --max-target-len 64 --json "$OUT/peer_bart_base.json" 2>&1 | tee "$OUT/peer_bart_base.log"
fi
if [ "$part" = msf ] || [ "$part" = all ]; then
  $PY bench/msf_throughput.py --arch llama-1b --dtype bfloat16 --zero 2 3 --workers 1 --micro 8 32 \
    --input-len 256 --target-len 32 --steps 8 --warmup 3 --profile 3 \
    --json "$OUT/msf_llama_1b.json" 2>&1 | tee "$OUT/msf_llama_1b.log"
fi
