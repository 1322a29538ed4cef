#!/bin/bash
# One call on the H200 machine for issue 7's and 8's single-GPU figures not yet measured: the 0.5B step
# with per-layer CUDA graphs (compile mode reduce-overhead) beside the default, the 0.5B step at
# 1 x 65536, and generation at 4K and 32K against transformers with the mamba_ssm kernels. Needs peers/
# as in benchmarks/README.md (carried); causal_conv1d builds in the background meanwhile. Each run is
# capped (RUN_LIMIT seconds), so one failure costs only its own time. Results go to $OUT.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
PEERS=$PWD/peers
CONV=$PEERS/causal_conv1d-1.7.0
export PYTHONPATH=$PWD:$PEERS/stub:$PEERS/mamba_ssm-2.3.2.post1:$CONV
if [ ! -e "$CONV/.done" ]; then  # .done marks the end of the build, failed or not
  (cd "$CONV" && CAUSAL_CONV1D_FORCE_BUILD=TRUE MAX_JOBS=10 nice -n 19 python3 setup.py build_ext --inplace \
     > /tmp/conv_build.log 2>&1; touch .done) &
fi
quiet() { grep -v "Warning\|warn(\|falling back"; }
LIMIT=${RUN_LIMIT:-200}

timeout "$LIMIT" python3 -m hybridcore bench --compile --compile-modes default reduce-overhead \
  --steps 5 --warmup 3 --tag modes --out "$OUT" 2>&1 | quiet
timeout "$LIMIT" python3 -m hybridcore bench --batch-size 1 --seq-len 65536 --compile --peers \
  --peer-fallback-batch 0 --steps 3 --warmup 2 --wait-for-file "$CONV/.done" --out "$OUT" 2>&1 | quiet
timeout "$LIMIT" python3 benchmarks/generate_bench.py --preset falcon-h1-0.5b --contexts 4096 32768 \
  --new-tokens 64 --repeats 1 --out "$OUT/generate_falcon-h1-0.5b_bf16_kernels_peer.json" 2>&1 | quiet | tail -12
tail -1 /tmp/conv_build.log 2>/dev/null
