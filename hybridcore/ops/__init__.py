"""Compute ops of the Mamba-2 path, and inference ops that fuse a run of small ones (the pre-norm, the
conv step, rope with the cache write, SwiGLU) or split one over the GPU (decode attention). Each name
dispatches to a fused Triton kernel where one applies (CUDA tensors, Triton importable, supported shapes),
else to the pure-PyTorch reference twin with the same signature. HYBRIDCORE_KERNELS=0 forces the reference,
HYBRIDCORE_KERNELS=on the kernels on any device (on CPU they run only under TRITON_INTERPRET=1: a way to
check the kernels' paths under the parallel layouts on CPU processes); `use_kernels(...)` changes it at
run time."""

from __future__ import annotations

import contextlib
import os

import torch

from .activation import swiglu_ref
from .attention import decode_attention_ref
from .conv import causal_conv1d_ref, causal_conv1d_step_ref
from .cross_entropy import chunked_cross_entropy
from .norm import gated_rms_norm_ref, gated_rms_norm_spanning_ref, rms_norm_ref
from .rope import rope_cache_write_ref
from .ssd import ssd_chunked, ssd_recurrent, ssd_step_ref

# "auto": kernels on CUDA; "off": reference everywhere; "on": kernels on any device (the CPU runs them
# only under TRITON_INTERPRET=1; used by the tests).
_ENV_MODES = {"1": "auto", "0": "off", "on": "on"}


def _mode_from_env(value: str) -> str:
    if value not in _ENV_MODES:
        raise ValueError(f"HYBRIDCORE_KERNELS must be one of {', '.join(_ENV_MODES)}, got {value!r}")
    return _ENV_MODES[value]


_MODE = _mode_from_env(os.environ.get("HYBRIDCORE_KERNELS", "1"))
_FUSED = None  # the fused modules once imported, False if Triton is missing
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # float64 stays on the reference


def load_kernels() -> bool:
    """Import the fused kernels' modules now (False: Triton is missing). torch.compile calls it before
    tracing: a first import inside a traced layer would leave a guard on the not-yet-imported state, and
    every compiled layer would compile again on its second call."""
    return bool(_fused())


def _fused():
    global _FUSED
    if _FUSED is None:
        try:
            from . import fused_conv, fused_decode, fused_ssd
            _FUSED = (fused_ssd, fused_conv, fused_decode)
        except ImportError:  # no Triton: the reference it is
            _FUSED = False
    return _FUSED


def kernels_active(t) -> bool:
    """Would an op on tensor t run the fused kernels?"""
    if _MODE == "off" or (_MODE == "auto" and not t.is_cuda):
        return False
    return bool(_fused())


@contextlib.contextmanager
def use_kernels(mode: str | bool):
    """Set the dispatch mode ("auto", "on", "off", or True/False for on/off) inside a block."""
    global _MODE
    chosen = {True: "on", False: "off"}.get(mode, mode) if isinstance(mode, (bool, str)) else None
    if chosen not in ("auto", "on", "off"):
        raise ValueError(f"use_kernels: mode must be 'auto', 'on', 'off', True or False, got {mode!r}")
    previous = _MODE
    _MODE = chosen
    try:
        yield
    finally:
        _MODE = previous


_WARMING_UP_A_CAPTURE = False


@contextlib.contextmanager
def graph_capture_kernels():
    """Inside: the kernels a CUDA-graph capture takes (decode attention's split kernel among them), for
    the eager run before a capture, which then compiles and loads them and computes what replays will."""
    global _WARMING_UP_A_CAPTURE
    previous, _WARMING_UP_A_CAPTURE = _WARMING_UP_A_CAPTURE, True
    try:
        yield
    finally:
        _WARMING_UP_A_CAPTURE = previous


def capturing_cuda_graph(t) -> bool:
    """Is a CUDA graph recording on t's device's current stream (or its warm-up running)?"""
    return _WARMING_UP_A_CAPTURE or (t.is_cuda and torch.cuda.is_current_stream_capturing())


def plain_tensors(*tensors) -> bool:
    """Plain tensors (or parameters) only, None skipped: a DTensor or another subclass keeps the PyTorch path,
    which dispatches through it."""
    return all(type(t) in (torch.Tensor, torch.nn.Parameter) for t in tensors if t is not None)


def inference_kernels_active(t) -> bool:
    """Would an inference-only op (no autograd: gradients off, outside torch.compile, which fuses the
    reference itself) on tensor t run its kernel?"""
    return (not torch.compiler.is_compiling() and not torch.is_grad_enabled() and t.dtype in _KERNEL_DTYPES
            and kernels_active(t))


def ssd(x, dt, A, B, C, chunk_size, D=None, dt_bias=None, dt_softplus=False, dt_limit=(0.0, float("inf")),
        initial_state=None, seq_idx=None, return_final_state=False):
    """Chunked SSD scan; returns (y, final_state or None)."""
    kw = dict(D=D, dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=dt_limit, initial_state=initial_state,
              seq_idx=seq_idx, return_final_state=return_final_state)
    if kernels_active(x) and _fused()[0].supported(x, B, chunk_size):
        out = _fused()[0].ssd(x, dt, A, B, C, chunk_size, **kw)
    else:
        out = ssd_chunked(x, dt, A, B, C, chunk_size, **kw)
    return out if return_final_state else (out, None)


def ssd_step(x, dt, A, B, C, state, D=None, dt_bias=None, dt_softplus=False, dt_limit=(0.0, float("inf"))):
    """One decoding token [b, 1, ...] from `state` [b, H, P, N] fp32, updated in place; returns y."""
    kw = dict(D=D, dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=dt_limit)
    if kernels_active(x) and _fused()[0].step_supported(x, B, state):
        return _fused()[0].ssd_step(x, dt, A, B, C, state, **kw)
    return ssd_step_ref(x, dt, A, B, C, state, **kw)


def causal_conv1d(x, weight, bias=None, seq_idx=None, initial_state=None, return_final_state=False):
    """Causal depthwise conv1d with document resets; returns (y, final_state or None)."""
    if kernels_active(x) and x.dtype in _KERNEL_DTYPES:
        return _fused()[1].causal_conv1d(x, weight, bias, seq_idx=seq_idx, initial_state=initial_state,
                                         return_final_state=return_final_state)
    return causal_conv1d_ref(x, weight, bias, seq_idx=seq_idx, initial_state=initial_state,
                             return_final_state=return_final_state)


def gated_rms_norm(y, gate, weight, n_groups, eps, norm_before_gate):
    """Grouped gated RMSNorm (see norm.py); fused where the kernels are active."""
    if kernels_active(y) and y.dtype in _KERNEL_DTYPES:
        return _fused()[1].gated_rms_norm(y, gate, weight, n_groups, eps, norm_before_gate)
    return gated_rms_norm_ref(y, gate, weight, n_groups, eps, norm_before_gate)


def gated_rms_norm_spanning(y, gate, weight, group_width, eps, norm_before_gate, all_sum):
    """The gated RMSNorm of one group wider than the channels y holds; `all_sum` adds a row statistic over
    the ranks that hold the rest (see norm.py); fused where the kernels are active."""
    if kernels_active(y) and y.dtype in _KERNEL_DTYPES:
        return _fused()[1].gated_rms_norm_spanning(y, gate, weight, group_width, eps, norm_before_gate, all_sum)
    return gated_rms_norm_spanning_ref(y, gate, weight, group_width, eps, norm_before_gate, all_sum)


def rms_norm(x, weight, eps, weight_in_fp32):
    """RMSNorm with fp32 statistics (see norm.rms_norm_ref); one kernel in inference."""
    if inference_kernels_active(x) and _fused()[2].rms_norm_supported(x, weight):
        return _fused()[2].rms_norm(x, weight, eps, weight_in_fp32)
    return rms_norm_ref(x, weight, eps, weight_in_fp32)


def causal_conv1d_step(x, state, weight, bias, silu):
    """One decoding token of the causal conv (see conv.causal_conv1d_step_ref), state updated in place."""
    if inference_kernels_active(x) and _fused()[2].conv_step_supported(x, state, weight):
        return _fused()[2].conv_step(x, state, weight, bias, silu)
    return causal_conv1d_step_ref(x, state, weight, bias, silu)


def rope_cache_write(q, k, v, cos, signed_sin, key_multiplier, query_multiplier, keys, values, slots):
    """Queries and keys rotated, keys and values written into the cache (see rope.rope_cache_write_ref)."""
    if inference_kernels_active(q) and _fused()[2].rope_cache_write_supported(q, k, v, keys):
        return _fused()[2].rope_cache_write(q, k, v, cos, signed_sin, key_multiplier, query_multiplier, keys,
                                            values, slots)
    return rope_cache_write_ref(q, k, v, cos, signed_sin, key_multiplier, query_multiplier, keys, values, slots)


def swiglu(gate, up, multiplier):
    """up * silu(gate * multiplier) (see activation.swiglu_ref); one kernel in inference."""
    if inference_kernels_active(up) and _fused()[2].swiglu_supported(gate, up):
        return _fused()[2].swiglu(gate, up, multiplier)
    return swiglu_ref(gate, up, multiplier)


def decode_attention(q, keys, values, mask, slot):
    """One token's query heads per key/value head against a static cache (see attention.decode_attention_ref);
    split over the keys while a CUDA graph records the decode step (or with the kernels forced on)."""
    # Where GPU time decides (a graph replay) the split kernel pays: 24 us against SDPA's 70 at
    # falcon-h1-0.5b's 4K cache on an H100. Eager decoding is bound by host time, and there SDPA's one
    # launch costs less than the kernel's two (29 against 119 us): benchmarks/decode_host.py.
    if (inference_kernels_active(q) and (_MODE == "on" or capturing_cuda_graph(q))
            and _fused()[2].decode_attention_supported(q, keys, values, mask)):
        return _fused()[2].decode_attention(q, keys, values, mask, slot)
    return decode_attention_ref(q, keys, values, mask, slot)


__all__ = ["ssd", "ssd_step", "causal_conv1d", "gated_rms_norm", "gated_rms_norm_ref", "gated_rms_norm_spanning",
           "gated_rms_norm_spanning_ref",
           "chunked_cross_entropy", "kernels_active", "load_kernels", "inference_kernels_active", "plain_tensors",
           "rms_norm", "rms_norm_ref",
           "causal_conv1d_step", "causal_conv1d_step_ref", "rope_cache_write", "rope_cache_write_ref", "swiglu",
           "swiglu_ref", "decode_attention", "decode_attention_ref",
           "use_kernels", "graph_capture_kernels", "ssd_chunked", "ssd_recurrent", "ssd_step_ref", "causal_conv1d_ref"]
