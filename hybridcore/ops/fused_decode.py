"""The inference kernels (triton_decode.py) as drop-ins for their twins. Eager calls launch a kernel
directly (a custom op costs host time on every call); Triton's CPU interpreter goes through a custom op
each, so that a kernel counts as one op in the launch tests, as `fused_ssd.ssd_step` does."""

from __future__ import annotations

import torch
from torch import Tensor

from . import triton_decode
from .triton_ssd import INTERPRET


@torch.library.custom_op("hybridcore::rms_norm", mutates_args=())
def rms_norm_op(x: Tensor, weight: Tensor, eps: float, weight_in_fp32: bool) -> Tensor:
    return triton_decode.rms_norm(x, weight, eps, weight_in_fp32)


@torch.library.custom_op("hybridcore::conv_step", mutates_args=("state",))
def conv_step_op(x: Tensor, state: Tensor, weight: Tensor, bias: Tensor | None, silu: bool) -> Tensor:
    return triton_decode.conv_step(x, state, weight, bias, silu)


@torch.library.custom_op("hybridcore::rope_cache_write", mutates_args=("keys", "values"))
def rope_cache_write_op(q: Tensor, k: Tensor, v: Tensor, cos: Tensor, signed_sin: Tensor, key_multiplier: float,
                        query_multiplier: float | None, keys: Tensor, values: Tensor, slot: Tensor) -> Tensor:
    return triton_decode.rope_cache_write(q, k, v, cos, signed_sin, key_multiplier, query_multiplier, keys, values,
                                          slot)


@torch.library.custom_op("hybridcore::swiglu", mutates_args=())
def swiglu_op(gate: Tensor, up: Tensor, multiplier: float) -> Tensor:
    return triton_decode.swiglu(gate, up, multiplier)


def rms_norm(x, weight, eps, weight_in_fp32):
    launch = rms_norm_op if INTERPRET else triton_decode.rms_norm
    return launch(x, weight, float(eps), bool(weight_in_fp32))


def conv_step(x, state, weight, bias, silu):
    launch = conv_step_op if INTERPRET else triton_decode.conv_step
    return launch(x, state, weight, bias, bool(silu))


def rope_cache_write(q, k, v, cos, signed_sin, key_multiplier, query_multiplier, keys, values, slot):
    launch = rope_cache_write_op if INTERPRET else triton_decode.rope_cache_write
    return launch(q, k, v, cos, signed_sin, float(key_multiplier),
                  None if query_multiplier is None else float(query_multiplier), keys, values, slot)


def swiglu(gate, up, multiplier):
    launch = swiglu_op if INTERPRET else triton_decode.swiglu
    return launch(gate, up, float(multiplier))


def rms_norm_supported(x: Tensor, weight: Tensor) -> bool:
    return x.stride(-1) == 1 and x.shape[-1] <= 32768 and weight.is_contiguous() and x.numel() > 0


def conv_step_supported(x: Tensor, state: Tensor, weight: Tensor) -> bool:
    return (x.dim() == 2 and x.stride(-1) == 1 and state.is_contiguous() and state.dtype == x.dtype
            and weight.is_contiguous() and weight.shape[-1] >= 2)


def rope_cache_write_supported(q: Tensor, k: Tensor, v: Tensor, keys: Tensor) -> bool:
    return (all(t.stride(-1) == 1 for t in (q, k, v, keys)) and q.shape[1] == 1 and keys.stride(-1) == 1
            and keys.shape[-1] <= 1024)


def swiglu_supported(gate: Tensor, up: Tensor) -> bool:
    return (gate.shape == up.shape and gate.dtype == up.dtype and gate.stride(-1) == 1 and up.stride(-1) == 1
            and gate.numel() > 0)
