#!/bin/bash
# One call on nvidia-h200-x2 (or -x4) for the multi-GPU figures of benchmarks/README.md: falcon-h1-1.5b-deep
# on one GPU, tp2, fsdp2 and pp2; falcon-h1-0.5b at 32K (cp1, cp2) and 128K (cp2, and cp4 on four GPUs);
# generation at 32K against transformers. Each run is capped, so one failure costs only its own time.
# Results go to $OUT (or benchmarks/results); run `bash -n` on it here first.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
GPUS=$(nvidia-smi --list-gpus | wc -l)
nvidia-smi --query-gpu=name,memory.used --format=csv

bench() {  # name, processes, parallel_bench arguments...
  local name=$1 procs=$2; shift 2
  [ "$procs" -le "$GPUS" ] || { echo "skip $name: needs $procs GPUs"; return; }
  echo "== $name"
  timeout ${RUN_LIMIT:-240} torchrun --standalone --nproc_per_node "$procs" benchmarks/parallel_bench.py "$@" \
    --out "$OUT/parallel_$name.json" 2>&1 | grep -E "tokens_per_second_per_gpu|mfu|peak_memory|first_losses|Error|error" -A0
}

DEEP="--preset falcon-h1-1.5b-deep --seq-len 4096 --global-batch 8 --steps 8 --warmup 3 --activation-checkpointing"
bench 1.5b-deep_1gpu 1 $DEEP
bench 1.5b-deep_tp2 2 $DEEP --tp 2
bench 1.5b-deep_fsdp2 2 $DEEP --dp-shard 2
bench 1.5b-deep_pp2 2 $DEEP --pp 2 --pp-microbatches 8

LONG="--preset falcon-h1-0.5b --set max_seq_len=131072 --global-batch 1 --steps 4 --warmup 2 --activation-checkpointing"
bench 0.5b_32k_cp1 1 $LONG --seq-len 32768
bench 0.5b_32k_cp2 2 $LONG --seq-len 32768 --cp 2
bench 0.5b_128k_cp1 1 $LONG --seq-len 131072
bench 0.5b_128k_cp2 2 $LONG --seq-len 131072 --cp 2
bench 0.5b_128k_cp4 4 $LONG --seq-len 131072 --cp 4

echo "== generation at 32K"
timeout ${RUN_LIMIT:-240} python3 benchmarks/generate_bench.py --preset falcon-h1-0.5b --contexts 32768 \
  --new-tokens 64 --repeats 2 --out "$OUT/generate_falcon-h1-0.5b_bf16_32k.json" 2>&1 | grep -v "falling back" | tail -6

python3 benchmarks/scale_summary.py "$OUT"
