"""torch.compile for the layers: one compiled graph per layer kind, and compile caches kept on disk.

Identical layers share a graph: each layer is compiled in place with static shapes, so Dynamo traces
each layer class's `forward` once per input shape and grad mode and every instance of the class
reuses that entry (Dynamo inlines built-in modules, so parameters are graph inputs rather than
constants guarded by the module's identity: the default since torch 2.5, always on from 2.13). Static
shapes also keep a second sequence length from turning sizes symbolic, which breaks the graph at
scaled_dot_product_attention's `is_causal`.

What a second run with the same shapes reuses, all under one directory (`configure_compile_cache`):
    <dir>/inductor   Inductor's FX-graph cache, AOTAutograd cache and GEMM autotuning results
                     (TORCHINDUCTOR_CACHE_DIR)
    <dir>/triton     compiled Triton kernels, Inductor's and hybridcore's own, and the timings that
                     choose between the autotuned configs of hybridcore's kernels (TRITON_CACHE_DIR,
                     TRITON_CACHE_AUTOTUNING)
The directory is, in order: the `cache_dir` argument, $HYBRIDCORE_COMPILE_CACHE, or
~/.cache/hybridcore/compile ($XDG_CACHE_HOME/hybridcore/compile when that is set). Dynamo's tracing
itself is not cached: a warm start still traces each layer kind once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from torch import nn

from ..ops import load_kernels

CACHE_ENV = "HYBRIDCORE_COMPILE_CACHE"
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")
_KERNEL_MODULES = ("hybridcore.ops.triton_ssd", "hybridcore.ops.triton_conv", "hybridcore.ops.triton_norm",
                   "hybridcore.ops.triton_ssd_step")


def default_cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hybridcore" / "compile"


def configure_compile_cache(cache_dir: str | os.PathLike | None = None) -> Path:
    """Point Inductor's and Triton's on-disk caches at one directory (see the module docstring) and turn
    on the caches that are off by default; returns the directory. Call it before the first compilation
    in the process: Inductor's compile workers read the environment when they start."""
    root = Path(cache_dir if cache_dir is not None else default_cache_dir()).expanduser().resolve()
    try:
        (root / "inductor").mkdir(parents=True, exist_ok=True)
        (root / "triton").mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"--compile-cache-dir {root}: cannot create the compile cache there ({error})") from None
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(root / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(root / "triton")
    os.environ["TRITON_CACHE_AUTOTUNING"] = "1"
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    if hasattr(inductor_config, "autotune_local_cache"):
        inductor_config.autotune_local_cache = True
    if hasattr(functorch_config, "enable_autograd_cache"):
        functorch_config.enable_autograd_cache = True
    _cache_kernel_autotuning()
    return root


def _cache_kernel_autotuning() -> None:
    """Triton reads TRITON_CACHE_AUTOTUNING when a kernel is decorated: kernels imported before the
    cache was configured get the setting directly (never under the interpreter, which does not tune)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return
    for name in _KERNEL_MODULES:
        module = sys.modules.get(name)
        for value in vars(module).values() if module is not None else ():
            if hasattr(value, "cache_results") and hasattr(value, "configs"):
                value.cache_results = True


def compile_layers(model: nn.Module, mode: str = "default", cache_dir: str | os.PathLike | None = None,
                   backend="inductor", fall_back_to_eager: bool = False) -> Path:
    """torch.compile every layer of `model.layers` in place (state-dict keys unchanged), identical layers
    sharing one graph, with the caches under `cache_dir` (see the module docstring); returns that directory.

    mode: one of COMPILE_MODES (reduce-overhead adds CUDA graphs, CUDA only). backend: Inductor, or any
    torch.compile backend (tests count graphs with their own). Apply it after activation checkpointing
    and before FSDP, as hybridcore.parallel.parallelize orders the steps. fall_back_to_eager: a layer that
    fails to compile runs eagerly, with Dynamo's warning, instead of raising (Dynamo's suppress_errors,
    process-wide; `failed_compilations` counts them).
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"--compile-mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    root = configure_compile_cache(cache_dir)
    load_kernels()  # before tracing: see ops.load_kernels
    options = {"backend": backend, "dynamic": False}
    if mode != "default":
        options["mode"] = mode
    if fall_back_to_eager:
        import torch._dynamo

        torch._dynamo.config.suppress_errors = True
    for layer in model.layers.values():
        layer.compile(**options)
    return root


def failed_compilations() -> int:
    """Frames torch.compile gave up on in this process so far (run eagerly under fall_back_to_eager)."""
    from torch._dynamo.utils import counters

    return counters["frames"]["total"] - counters["frames"]["ok"]


__all__ = ["compile_layers", "failed_compilations", "configure_compile_cache", "default_cache_dir", "CACHE_ENV",
           "COMPILE_MODES"]
