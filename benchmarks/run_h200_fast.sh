#!/bin/bash
# The fast-by-default figures on one H200, one call per part (each well inside a call's 10 minutes):
#   bash benchmarks/run_h200_fast.sh generate        # decode and prefill, batch 1/8/64, 4K prompt: generate
#                                                    # (CUDA graph), --no-cuda-graph, transformers (+ mamba_ssm
#                                                    # when peers/ is carried, benchmarks/README.md), ~3-4 min
#   bash benchmarks/run_h200_fast.sh compile         # time to the first train step, cold then warm, 0.5B 4x4096
#                                                    # reduce-overhead, then the per-layer compile cold, ~4-6 min
#   bash benchmarks/run_h200_fast.sh fp8-throughput  # 8 falcon-h1-7b blocks, 2x4096: bf16, tensorwise, rowwise, ~4-6 min
#   bash benchmarks/run_h200_fast.sh fp8-loss        # 300 steps of 0.5B on the embedded corpus, bf16 and tensorwise, ~5-7 min
# The FP8 parts install torchao from .whl/ (carry it: the wheel of the `fp8` extra, downloaded where PyPI is
# reachable with `pip download --no-deps --only-binary=:all: --python-version 3.12 --platform
# manylinux_2_28_x86_64 -d .whl torchao==0.18.0`). Results go to $OUT (default benchmarks/results).
# The exit status is that of the last benchmark; read the summaries at the end of the log.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
PEERS=$PWD/peers
export PYTHONPATH=$PWD:$PEERS/stub:$PEERS/mamba_ssm-2.3.2.post1:$PEERS/causal_conv1d-1.7.0
quiet() { grep -v "Warning\|warn(\|falling back\|_warn_once"; }
need_torchao() {
  python3 -c "import torchao.float8" 2>/dev/null && return
  python3 -m pip install -q --no-deps --no-index .whl/torchao-*.whl 2>&1 | tail -2
}
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
case "${1:-}" in
  generate)
    timeout 560 python3 benchmarks/generate_bench.py --out "$OUT" 2>&1 | quiet ;;
  compile)
    timeout 570 python3 benchmarks/compile_startup.py --baseline --process-timeout 240 --out "$OUT" 2>&1 | quiet ;;
  fp8-throughput)
    need_torchao
    timeout 570 python3 benchmarks/fp8_bench.py --part throughput --process-timeout 180 --out "$OUT" 2>&1 | quiet ;;
  fp8-loss)
    need_torchao
    export TRITON_CACHE_AUTOTUNING=1  # the second run reuses the first one's kernel tuning
    timeout 570 python3 benchmarks/fp8_bench.py --part loss --process-timeout 280 --out "$OUT" 2>&1 | quiet ;;
  *)
    echo "usage: bash benchmarks/run_h200_fast.sh generate|compile|fp8-throughput|fp8-loss" >&2
    exit 2 ;;
esac
