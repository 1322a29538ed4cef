#!/bin/bash
# The multi-GPU figures of benchmarks/README.md on nvidia-h200-x2 (or -x4), in two calls of under 10 minutes:
#   bash benchmarks/run_h200_scale.sh layouts  # the layout tests over NCCL (each layout against one GPU, fp32),
#                                              # then falcon-h1-1.5b-deep 8 x 4096 on one GPU, tp2, fsdp2, pp2
#                                              # (the kernel tests run on the second GPU meanwhile)
#   bash benchmarks/run_h200_scale.sh cp       # the agreement of each 2-rank layout over NCCL (run_h200_targets.sh
#                                              # l has one GPU against CPU); falcon-h1-0.5b at 32K (cp1, cp2) and
#                                              # 128K (cp1, cp2, and cp4 on four GPUs)
# Each run is capped (RUN_LIMIT seconds), so one failure costs only its own time. Results go to $OUT (or
# benchmarks/results); scale_summary.py then compares every layout with its one-GPU run.
# The exit status says the script ran to its end, not that the tests in it passed: read the log.
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
  timeout -k 10 ${RUN_LIMIT:-110} torchrun --standalone --nproc_per_node "$procs" benchmarks/parallel_bench.py "$@" \
    --out "$OUT/parallel_$name.json" 2>&1 | grep -E "tokens_per_second_per_gpu|mfu|peak_memory|first_losses|Error|error" -A0
}

if [ "${1:-layouts}" = layouts ]; then
  # the kernel and FlexAttention tests on the second GPU, alongside the NCCL tests and the one-GPU baseline
  ( CUDA_VISIBLE_DEVICES=1 timeout -k 10 260 python3 -m pytest -q -p no:cacheprovider -rfE --tb=short \
      tests/ops/test_kernels.py tests/model/test_flex_document.py > /tmp/gpu_tests.log 2>&1 ) &
  echo "== layout tests, NCCL"
  HYBRIDCORE_TEST_DEVICE=cuda timeout -k 10 180 python3 -m pytest -q -p no:cacheprovider -rfEs --tb=short \
    tests/parallel/test_layouts.py 2>&1 | tail -40
  DEEP="--preset falcon-h1-1.5b-deep --seq-len 4096 --global-batch 8 --steps 8 --warmup 3 --activation-checkpointing"
  CUDA_VISIBLE_DEVICES=0 bench 1.5b-deep_1gpu 1 $DEEP
  wait
  echo "== kernel and FlexAttention tests (GPU 1)"; grep -v "^  \|^$\|Warning\|warn" /tmp/gpu_tests.log | tail -40
  bench 1.5b-deep_tp2 2 $DEEP --tp 2
  bench 1.5b-deep_fsdp2 2 $DEEP --dp-shard 2
  bench 1.5b-deep_pp2 2 $DEEP --pp 2 --pp-microbatches 8
else  # cp, after the agreement figures the layouts call's failures did not show
  echo "== layout tests, NCCL: the agreement of each layout with one GPU"
  HYBRIDCORE_TEST_DEVICE=cuda timeout -k 10 180 python3 -m pytest -q -s -p no:cacheprovider --tb=no \
    tests/parallel/test_layouts.py -k "two_rank_layouts or losses_actually_move" 2>&1 | grep "agreement\|passed\|failed"
  LONG="--preset falcon-h1-0.5b --set max_seq_len=131072 --global-batch 1 --steps 4 --warmup 2 --activation-checkpointing"
  bench 0.5b_32k_cp1 1 $LONG --seq-len 32768
  bench 0.5b_32k_cp2 2 $LONG --seq-len 32768 --cp 2
  bench 0.5b_128k_cp1 1 $LONG --seq-len 131072
  bench 0.5b_128k_cp2 2 $LONG --seq-len 131072 --cp 2
  bench 0.5b_128k_cp4 4 $LONG --seq-len 131072 --cp 4
fi
python3 benchmarks/scale_summary.py "$OUT"
