"""The inference kernels (triton_decode.py, triton_attention.py) as drop-ins for their twins. Eager calls
launch a kernel directly (a custom op costs host time on every call); Triton's CPU interpreter goes through
a custom op each, so that a kernel counts as one op in the launch tests, as `fused_ssd.ssd_step` does.

A kernel that fails to build or launch on this machine (a Triton or GPU it was not made for) warns once
and leaves its twin to do the work from then on: generation goes on, slower."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from . import plain_tensors, triton_attention, triton_decode
from .activation import swiglu_ref
from .attention import decode_attention_ref
from .conv import causal_conv1d_step_ref
from .norm import rms_norm_ref
from .rope import rope_cache_write_ref
from .triton_ssd import INTERPRET

_FAILED: set[str] = set()  # kernels that failed here: their twins run instead


@torch.library.custom_op("hybridcore::rms_norm", mutates_args=())
def rms_norm_op(x: Tensor, weight: Tensor, eps: float, weight_in_fp32: bool) -> Tensor:
    return triton_decode.rms_norm(x, weight, eps, weight_in_fp32)


@torch.library.custom_op("hybridcore::conv_step", mutates_args=("state",))
def conv_step_op(x: Tensor, state: Tensor, weight: Tensor, bias: Tensor | None, silu: bool) -> Tensor:
    return triton_decode.conv_step(x, state, weight, bias, silu)


@torch.library.custom_op("hybridcore::rope_cache_write", mutates_args=("keys", "values"))
def rope_cache_write_op(q: Tensor, k: Tensor, v: Tensor, cos: Tensor, signed_sin: Tensor, key_multiplier: float,
                        query_multiplier: float | None, keys: Tensor, values: Tensor, slots: Tensor) -> Tensor:
    return triton_decode.rope_cache_write(q, k, v, cos, signed_sin, key_multiplier, query_multiplier, keys, values,
                                          slots)


@torch.library.custom_op("hybridcore::swiglu", mutates_args=())
def swiglu_op(gate: Tensor, up: Tensor, multiplier: float) -> Tensor:
    return triton_decode.swiglu(gate, up, multiplier)


@torch.library.custom_op("hybridcore::decode_attention", mutates_args=())
def decode_attention_op(q: Tensor, keys: Tensor, values: Tensor, mask: Tensor, slot: Tensor) -> Tensor:
    return triton_attention.decode_attention(q, keys, values, mask, slot)


def _launch(name, kernel, op, twin, *args):
    if name in _FAILED:
        return twin(*args)
    try:
        return (op if INTERPRET else kernel)(*args)
    except Exception as error:  # any build or launch failure: the twin is always right
        if isinstance(error, torch.OutOfMemoryError):
            raise
        _FAILED.add(name)
        warnings.warn(f"hybridcore: the {name} inference kernel failed on this machine ({type(error).__name__}: "
                      f"{error}); its PyTorch twin runs instead (slower)", stacklevel=3)
        return twin(*args)


def rms_norm(x, weight, eps, weight_in_fp32):
    return _launch("rms_norm", triton_decode.rms_norm, rms_norm_op, rms_norm_ref, x, weight, float(eps),
                   bool(weight_in_fp32))


def conv_step(x, state, weight, bias, silu):
    return _launch("conv_step", triton_decode.conv_step, conv_step_op, causal_conv1d_step_ref, x, state, weight,
                   bias, bool(silu))


def rope_cache_write(q, k, v, cos, signed_sin, key_multiplier, query_multiplier, keys, values, slots):
    return _launch("rope_cache_write", triton_decode.rope_cache_write, rope_cache_write_op, rope_cache_write_ref,
                   q, k, v, cos, signed_sin, float(key_multiplier),
                   None if query_multiplier is None else float(query_multiplier), keys, values, slots)


def swiglu(gate, up, multiplier):
    return _launch("swiglu", triton_decode.swiglu, swiglu_op, swiglu_ref, gate, up, float(multiplier))


def decode_attention(q, keys, values, mask, slot):
    return _launch("decode_attention", triton_attention.decode_attention, decode_attention_op,
                   decode_attention_ref, q, keys, values, mask, slot)


def rms_norm_supported(x: Tensor, weight: Tensor) -> bool:
    return (plain_tensors(x, weight) and x.stride(-1) == 1 and x.shape[-1] <= 32768 and weight.is_contiguous()
            and x.numel() > 0)


def conv_step_supported(x: Tensor, state: Tensor, weight: Tensor) -> bool:
    return (plain_tensors(x, state, weight) and x.dim() == 2 and x.stride(-1) == 1 and state.is_contiguous()
            and state.dtype == x.dtype and weight.is_contiguous() and weight.shape[-1] >= 2)


def rope_cache_write_supported(q: Tensor, k: Tensor, v: Tensor, keys: Tensor) -> bool:
    return (plain_tensors(q, k, v, keys) and all(t.stride(-1) == 1 for t in (q, k, v, keys)) and keys.shape[-1] <= 1024
            and q.shape[0] <= 65535 and keys.shape[1] + q.shape[-1] // keys.shape[-1] <= 65535 and q.numel() > 0)


# Below this many elements SwiGLU's three PyTorch ops cost less host time than one Triton launch (19 against
# 25 us on an H100 host): decoding keeps them, prefill (memory-bound there) takes the kernel.
SWIGLU_MIN_ELEMENTS = 1 << 16


def swiglu_supported(gate: Tensor, up: Tensor) -> bool:
    return (plain_tensors(gate, up) and gate.shape == up.shape and gate.dtype == up.dtype and gate.stride(-1) == 1
            and up.stride(-1) == 1 and up.numel() >= SWIGLU_MIN_ELEMENTS)


def decode_attention_supported(q: Tensor, keys: Tensor, values: Tensor, mask: Tensor) -> bool:
    return (plain_tensors(q, keys, values, mask) and q.dim() == 4 and keys.shape == values.shape
            and q.shape[:2] == keys.shape[:2] and q.shape[-1] == keys.shape[-1] <= 256
            and keys.dtype == values.dtype == q.dtype and all(t.stride(-1) == 1 for t in (q, keys, values, mask))
            and mask.dim() == 4 and mask.shape[1:3] == (1, 1) and mask.shape[-1] == keys.shape[2]
            and mask.shape[0] == q.shape[0] and q.numel() > 0)
