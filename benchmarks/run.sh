#!/usr/bin/env bash
# The one-GPU benchmark suite: each contender in its own python process, one JSON per figure and contender,
# then the README's speed table regenerated from benchmarks/results/. See benchmarks/README.md.
#
#   bash benchmarks/run.sh [FIGURE ...]      FIGURE: train-4x4096 train-2x16384 ssd generate train-run
#                                            fp8-throughput fp8-loss documents (default: all)
#
#   train-4x4096, train-2x16384  the training step of `hybridcore bench`: ours, transformers + kernels, transformers
#   ssd             the SSD scan alone: ours, mamba_ssm
#   generate        prefill and decode at batch 1, 8, 64: ours (CUDA graph), ours eager, transformers; then
#                   where decoding spends its time (decode_host.py: per op, per decode attention)
#   train-run       `hybridcore train` on packed documents: tokens/s, and the first step cold and warm
#   fp8-throughput  8 falcon-h1-7b blocks at 2 x 4096: bf16, float8 tensorwise, rowwise (torchao from .whl/)
#   fp8-loss        300 steps of falcon-h1-0.5b, bf16 against float8 tensorwise
#   documents       packed-document attention alone (attention_bench.py), and ours at 4 x 4096 on documents
#                   of about 3,200 tokens (-documents.json)
#
# Environment:
#   OUT=DIR          where the JSON goes (default benchmarks/results)
#   PEERS=DIR        unpacked mamba_ssm and causal_conv1d sources (see benchmarks/README.md); every folder in
#                    it goes on PYTHONPATH, and causal_conv1d is built first when it does not import yet
#                    (about 5 minutes; the build stays in DIR for the next run on the same machine)
#   CONTENDERS="ours hf_kernels hf_torch"   the training-step contenders to run
#   PEAK_TFLOPS=989  the GPU's datasheet dense bf16 TFLOP/s (MFU's denominator; 989 for H100 and H200 SXM)
#   LIMIT=540        seconds one contender may take before it is stopped (its JSON then says "incomplete")
#   SMOKE=1          tiny CPU runs of the same processes (what the tests run)
# A contender that is absent, out of memory or fails is recorded as such; the suite goes on.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
CONTENDERS=${CONTENDERS:-ours hf_kernels hf_torch}
PEAK_TFLOPS=${PEAK_TFLOPS:-989}
LIMIT=${LIMIT:-540}
FIGURES=${*:-train-4x4096 train-2x16384 ssd generate train-run fp8-throughput fp8-loss documents}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
for figure in $FIGURES; do
  case $figure in
    train-4x4096|train-2x16384|ssd|generate|train-run|fp8-throughput|fp8-loss|documents) ;;
    *) echo "unknown figure '$figure': use train-4x4096, train-2x16384, ssd, generate, train-run," \
            "fp8-throughput, fp8-loss or documents" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"

if [ -n "${PEERS:-}" ]; then
  PEERS=$(cd "$PEERS" && pwd) || exit 2
  # mamba_ssm's package imports a compiled Mamba-1 module that its Triton SSD does not use: an empty stand-in
  mkdir -p "$PEERS/stub" && touch "$PEERS/stub/selective_scan_cuda.py"
  for dir in "$PEERS"/*/; do PYTHONPATH=$PYTHONPATH:${dir%/}; done
  conv=$(ls -d "$PEERS"/causal_conv1d-*/ 2>/dev/null | head -1)
  if [ -n "$conv" ] && ! python3 -c "import torch, causal_conv1d_cuda" 2>/dev/null; then
    echo "== building causal_conv1d in $conv (several minutes)"
    (cd "$conv" && CAUSAL_CONV1D_FORCE_BUILD=TRUE MAX_JOBS=$(nproc) python3 setup.py build_ext --inplace \
      > /tmp/causal_conv1d_build.log 2>&1) || { echo "causal_conv1d build failed:"; tail -5 /tmp/causal_conv1d_build.log; }
  fi
fi
[ -n "${SMOKE:-}" ] && SMOKE_FLAG=--smoke || SMOKE_FLAG=
need_torchao() {  # the fp8 extra, from a wheel in .whl/ when it is not installed (a machine without PyPI)
  python3 -c "import torchao.float8" 2>/dev/null && return
  python3 -m pip install -q --no-deps --no-index .whl/torchao-*.whl 2>&1 | tail -2
}

contender() {  # contender NAME BENCH_FLAGS...: one process, stopped after LIMIT seconds
  local name=$1; shift
  # ours with bench's defaults, as a user gets them (on CUDA each layer compiled, with CUDA graphs)
  echo "== hybridcore bench --contender $name $*"
  timeout -k 20 "$LIMIT" python3 -m hybridcore bench --contender "$name" "$@" \
    --peak-tflops "$PEAK_TFLOPS" --out "$OUT" $SMOKE_FLAG || echo "   (exit status $?)"
}

for figure in $FIGURES; do
  case $figure in
    train-4x4096)  for c in $CONTENDERS; do contender "$c" --batch-size 4 --seq-len 4096; done ;;
    train-2x16384) for c in $CONTENDERS; do contender "$c" --batch-size 2 --seq-len 16384; done ;;
    ssd)
      for side in ours mamba_ssm; do
        echo "== ssd_kernel_bench.py --side $side"
        timeout -k 20 "$LIMIT" python3 benchmarks/ssd_kernel_bench.py --side "$side" --out "$OUT" \
          || echo "   (exit status $?)"
      done ;;
    generate)
      echo "== generate_bench.py"
      timeout -k 20 "$LIMIT" python3 benchmarks/generate_bench.py --out "$OUT" $SMOKE_FLAG || echo "   (exit status $?)"
      echo "== decode_host.py"
      timeout -k 20 "$LIMIT" python3 benchmarks/decode_host.py --out "$OUT" $SMOKE_FLAG || echo "   (exit status $?)" ;;
    train-run)
      echo "== train_bench.py"
      timeout -k 20 "$LIMIT" python3 benchmarks/train_bench.py --out "$OUT" $SMOKE_FLAG || echo "   (exit status $?)" ;;
    documents)
      if [ -z "${SMOKE:-}" ]; then
        echo "== attention_bench.py"
        timeout -k 20 "$LIMIT" python3 benchmarks/attention_bench.py \
          --out "$OUT/attention-4x4096-8h2kv64-doc3200.json" || echo "   (exit status $?)"
      fi
      contender ours --batch-size 4 --seq-len 4096 --documents 3200 ;;
    fp8-throughput|fp8-loss)
      need_torchao
      echo "== fp8_bench.py --part ${figure#fp8-}"
      timeout -k 20 "$LIMIT" python3 benchmarks/fp8_bench.py --part "${figure#fp8-}" --out "$OUT" $SMOKE_FLAG \
        || echo "   (exit status $?)" ;;
  esac
done

if [ -z "${SMOKE:-}" ] && [ "$OUT" = benchmarks/results ]; then
  python3 benchmarks/make_table.py --write README.md
fi
python3 benchmarks/make_table.py --results "$OUT"
