"""triton.autotune, with every candidate config compiled side by side before any is timed.

Triton's autotuner compiles each candidate when it first times it, one after the other. A cold start of
falcon-h1-0.5b's training spent about 36 s compiling and timing them on an H100 (ten kernels, two to six
candidates each; the sum of TRITON_PRINT_AUTOTUNING=1's times). Compiling runs mostly outside the GIL
(LLVM, ptxas), so the candidates are handed to threads first through Triton's own AsyncCompileMode, and the
autotuner then finds them compiled: the eager cold start's first step took 35.1 s instead of 46.6
(benchmarks/results/h100/train-*-none*.json). A Triton without that mode compiles one by one, as before.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import os

import triton

try:
    from triton.runtime._async_compile import AsyncCompileMode, active_mode
except ImportError:
    AsyncCompileMode = active_mode = None

_POOL: concurrent.futures.ThreadPoolExecutor | None = None


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        # the host's cores, shared by the processes torchrun started on it
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
        workers = max(1, min(8, (os.cpu_count() or 1) // max(1, local_processes)))
        _POOL = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="hybridcore-triton-compile")
    return _POOL


def compile_together(fn, candidates: list, nargs: dict, meta: dict) -> list:
    """Compile every candidate of `fn` (a triton.jit function) for these arguments at once; returns the
    candidates unchanged (this runs as the autotuner's early prune, just before it times them)."""
    if AsyncCompileMode is None or len(candidates) < 2 or active_mode.get() is not None:
        return candidates
    # ignore_errors: a candidate that fails to compile is left to the autotuner, which records it as unusable
    with AsyncCompileMode(_pool(), ignore_errors=True):
        for config in candidates:
            arguments = {**nargs, **meta, **config.all_kwargs()}
            arguments.pop("warmup", None)  # the launch's own keywords, which reach the autotuner with the rest
            fn.warmup(grid=arguments.pop("grid", (1,)), **arguments)
    return candidates


# Triton times each candidate for 25 ms of warm-up and 100 ms of repeats (its L2 flushes between calls
# counted in them): at least 0.125 s a candidate, seconds of a cold start over a few dozen. These kernels
# run 0.02-0.5 ms at training shapes, so 5 + 25 ms still time each of them tens to hundreds of times.
# (On an H100, falcon-h1-0.5b's first eager step from a cold cache spent 3.8 s in its 11 tunings with this
# budget, by TRITON_PRINT_AUTOTUNING=1; the run before it, on another machine, was not timed that way.)
BENCH_WARMUP_MS, BENCH_REPEAT_MS = 5, 25


def quick_bench(kernel_call, quantiles=None, **options):
    """The autotuner's timing (triton.testing.do_bench) with the shorter budget above."""
    from triton.testing import do_bench

    return do_bench(kernel_call, warmup=BENCH_WARMUP_MS, rep=BENCH_REPEAT_MS, quantiles=quantiles, **options)


def autotune(configs: list, key: list, keep=None, **options):
    """triton.autotune(configs=..., key=..., **options) with the candidates compiled together and timed
    with `quick_bench` (where this Triton takes a do_bench). keep(candidates, arguments) -> the candidates
    worth timing for these arguments (all of them when None)."""
    if "do_bench" in inspect.signature(triton.autotune).parameters:
        options.setdefault("do_bench", quick_bench)

    def decorate(fn):
        def prune(candidates, nargs, **meta):
            if keep is not None:
                candidates = keep(candidates, nargs)
            return compile_together(fn, candidates, nargs, meta)
        return triton.autotune(configs=configs, key=key, prune_configs_by={"early_config_prune": prune},
                               **options)(fn)
    return decorate
