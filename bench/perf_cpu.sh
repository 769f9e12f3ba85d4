#!/usr/bin/env bash
# Every CPU figure of issue 18 on this machine in one go (~10 min on an idle 2-core VM), JSON and
# logs under OUT. Run from the repository root with the project's environment active:
#     bash bench/perf_cpu.sh runs/perf_cpu            # the figures (take them on an otherwise idle machine)
#     bash bench/perf_cpu.sh /tmp/perf_toy --toy      # every piece at toy size (~3 min): does it all run?
# Pieces (each a JSON file; the printed tables are in the .log next to it):
#   peak + flops   the old vs new MSF FLOP count for llama-1b / bart-base shapes (no timing)
#   peer_t5        tiny-t5: packed PT vs HF PEFT one job at a time, 64 jobs, K = 1 4 16 64
#   peer_smollm2   SmolLM2-135M: the same, 4 jobs x 4 steps, K = 4 (both sides compute-bound here)
#   real_t5        tiny-t5 through train_pack, PT and IST, K = 1 4 16 64, utilization per row
#   real_smollm2   SmolLM2-135M through train_pack, PT and IST, fp32, K = 1 4, with a --profile split
#   bf16_t5        tiny-t5 synthetic IST step in bf16: EMULATED unless the CPU has AVX512-bf16 / AMX
#   msf_t5         MSF throughput, tiny-t5, ZeRO-0/2, 1 and 2 workers, with a --profile split
# SmolLM2 runs on the shared real tasks (../shared/data/tasks) when present, else on the demo tasks.
set -uo pipefail
OUT=${1:?usage: bash bench/perf_cpu.sh OUT_DIR [--toy]}
TOY=${2:-}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false DS_ACCELERATOR=cpu
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PY:-python}
DATA=demo
[ -d ../shared/data/tasks ] && DATA=shared

{
  date -u +"date %Y-%m-%dT%H:%M:%SZ"
  fast_bf16=$(grep -o -w -e avx512_bf16 -e amx_bf16 /proc/cpuinfo | sort -u | xargs || true)
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), nproc $(nproc)," \
       "fast bf16 flags: ${fast_bf16:-none (bf16 is emulated: expect it far slower than fp32)}"
  $PY -c "import torch, transformers, peft; print('torch', torch.__version__, 'threads', torch.get_num_threads(), 'transformers', transformers.__version__, 'peft', peft.__version__)"
  echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "smollm2 data: $DATA; toy: ${TOY:-no}"
} | tee "$OUT/env.txt"

if [ "$TOY" = --toy ]; then
  PEER_T5="--tasks 2 --lrs 0.1 0.3 --steps 2 --packs 1 4"
  PEER_SM="--tasks 1 --lrs 0.1 --steps 1 --packs 1"
  REAL_T5="--packs 1 4 --steps 3 --warmup 1 --tasks 2"
  REAL_SM="--packs 1 --steps 2 --warmup 1 --tasks 1 --profile 1"
  BF16="--packs 1 --steps 1 --warmup 0"
  MSF="--zero 2 --workers 1 --steps 1 --warmup 1 --profile 1"
else
  PEER_T5="--tasks 8 --lrs 0.01 0.02 0.05 0.1 0.2 0.5 1.0 2.0 --steps 20 --packs 1 4 16 64"
  PEER_SM="--tasks 2 --lrs 0.03 0.3 --steps 4 --packs 4"
  REAL_T5="--packs 1 4 16 64 --steps 20 --warmup 2 --tasks 8"
  REAL_SM="--packs 1 4 --steps 3 --warmup 1 --tasks 4 --profile 1"
  BF16="--packs 1 16 --steps 3 --warmup 1"
  MSF="--zero 0 2 --workers 1 2 --steps 8 --warmup 2 --profile 3"
fi

status=0
piece() {  # piece NAME CMD...: run, log, time; a failing piece is reported and the rest still run
  local name=$1
  shift
  local t0=$SECONDS
  echo "== $name: $*" | tee "$OUT/$name.log"
  "$@" >>"$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc, $((SECONDS - t0)) s" | tee -a "$OUT/$name.log" "$OUT/summary.txt"
  [ $rc -eq 0 ] || status=1
}

piece flops_llama_1b $PY bench/flops.py --arch llama-1b --batch 8 --input-len 256 --target-len 32 --prompt-len 100
piece flops_bart_base $PY bench/flops.py --arch bart-base --batch 8 --input-len 64 --target-len 8 --prompt-len 100
piece peer_t5 $PY bench/peer_peft.py --model tiny-t5 --data demo --prompt-len 16 $PEER_T5 --json "$OUT/peer_t5.json"
piece peer_smollm2 $PY bench/peer_peft.py --model smollm2-135m --data "$DATA" --prompt-len 8 --max-input-len 64 \
  --max-target-len 8 $PEER_SM --json "$OUT/peer_smollm2.json"
piece real_t5 $PY bench/ist_throughput.py --mode real --model tiny-t5 --data demo --kinds pt ist --prompt-len 16 --d 16 \
  $REAL_T5 --json "$OUT/real_t5.json"
piece real_smollm2 $PY bench/ist_throughput.py --mode real --model smollm2-135m --data "$DATA" --kinds pt ist \
  --prompt-len 8 --d 16 --input-len 64 --target-len 8 --eval-examples 2 $REAL_SM --json "$OUT/real_smollm2.json"
piece bf16_t5 $PY bench/ist_throughput.py --model tiny-t5 --dtype bfloat16 --prompt-len 16 --d 16 $BF16 \
  --json "$OUT/bf16_t5.json"
piece msf_t5 $PY bench/msf_throughput.py --model tiny-t5 --micro 8 --prompt-len 16 --d 16 --mid-dim 64 $MSF \
  --json "$OUT/msf_t5.json"
echo "total $SECONDS s" | tee -a "$OUT/summary.txt"
exit $status
