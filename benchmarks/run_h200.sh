#!/bin/bash
# One call on the H200 machine (see benchmarks/README.md): build causal_conv1d in the background, time the
# SSD alone against mamba_ssm, then the full training step against transformers with and without the
# kernels (one process), with the fused-vs-reference check at real shapes. Peers' sources come from
# ./peers (git-ignored; carried by the device call). Results go to $OUT (or benchmarks/results).
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
PEERS=$PWD/peers
export PYTHONPATH=$PWD:$PEERS/stub:$PEERS/mamba_ssm-2.3.2.post1:$PEERS/causal_conv1d-1.7.0
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.used --format=csv
if [ ! -e "$PEERS/causal_conv1d-1.7.0/.done" ]; then  # .done marks the end of the build, failed or not
  (cd "$PEERS/causal_conv1d-1.7.0" && CAUSAL_CONV1D_FORCE_BUILD=TRUE MAX_JOBS=4 nice -n 19 \
     python3 setup.py build_ext --inplace > "$OUT/conv_build.log" 2>&1; touch .done) &
fi
python3 benchmarks/ssd_kernel_bench.py --packed --out "$OUT" 2>&1 | grep -v Warning
python3 -m hybridcore bench --check --peers --compile --wait-for-file "$PEERS/causal_conv1d-1.7.0/.done" \
  --out "$OUT" ${BENCH_ARGS:-} 2>&1 | grep -v "Warning\|warn("
tail -3 "$OUT/conv_build.log" 2>/dev/null
