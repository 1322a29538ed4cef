"""The Triton SSD as torch.library custom ops (forward, backward, autograd, fake shapes), so that
torch.compile traces through it with fullgraph=True. Same signature and numerics contract as
`ssd.ssd_chunked`: y in x's dtype, the final state in fp32."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import triton_ssd, triton_ssd_step

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _inputs_supported(x: Tensor, B: Tensor) -> bool:
    """Dtypes, head grouping and state size that both the chunked and the decode kernels handle."""
    return (x.dtype in SUPPORTED_DTYPES and B.dtype in SUPPORTED_DTYPES and x.shape[2] % B.shape[2] == 0
            and B.shape[-1] <= 256)


def supported(x: Tensor, B: Tensor, chunk_size: int) -> bool:
    """Shapes the kernels handle; anything else goes to the reference."""
    return (_inputs_supported(x, B) and 16 <= chunk_size <= 256 and chunk_size & (chunk_size - 1) == 0
            and x.shape[-1] <= 256)


@torch.library.custom_op("hybridcore::ssd_fwd", mutates_args=())
def ssd_fwd(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, dt_bias: Tensor | None,
            initial_state: Tensor | None, seq_idx: Tensor | None, chunk_size: int, dt_softplus: bool,
            dt_min: float, dt_max: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return triton_ssd.ssd_forward(x, dt, A, B, C, chunk_size, D=D, dt_bias=dt_bias, dt_softplus=dt_softplus,
                                  dt_min=dt_min, dt_max=dt_max, initial_state=initial_state, seq_idx=seq_idx)


@ssd_fwd.register_fake
def _(x, dt, A, B, C, D, dt_bias, initial_state, seq_idx, chunk_size, dt_softplus, dt_min, dt_max):
    batch, length, heads, head_dim = x.shape
    groups, state = B.shape[2], B.shape[3]
    nchunks = -(-length // chunk_size)
    f32 = dict(device=x.device, dtype=torch.float32)
    return (x.new_empty(x.shape), x.new_empty(batch, heads, head_dim, state, dtype=torch.float32),
            torch.empty(batch, heads, nchunks, chunk_size, **f32),
            torch.empty(batch, heads, nchunks, chunk_size, **f32),
            torch.empty(batch, nchunks, groups, chunk_size, chunk_size, **f32),
            torch.empty(batch, nchunks, heads, head_dim, state, **f32))


@torch.library.custom_op("hybridcore::ssd_bwd", mutates_args=())
def ssd_bwd(dy: Tensor, dfinal: Tensor | None, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
            D: Tensor | None, dt_bias: Tensor | None, seq_idx: Tensor | None, dt_out: Tensor, a_out: Tensor,
            cb: Tensor, enter: Tensor, chunk_size: int, dt_softplus: bool, dt_min: float,
            dt_max: float) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    dx, ddt, dA, dB, dC, dD, dbias, dinit = triton_ssd.ssd_backward(
        dy, dfinal, x, dt, A, B, C, chunk_size, D, dt_bias, dt_softplus, dt_min, dt_max, seq_idx, dt_out, a_out,
        cb, enter)
    # custom ops return tensors only: absent inputs get an empty gradient
    dD = dD.to(D.dtype) if D is not None else x.new_empty(0)
    dbias = dbias.to(dt_bias.dtype) if dt_bias is not None else x.new_empty(0)
    return dx, ddt, dA.to(A.dtype), dB, dC, dD, dbias, dinit


@ssd_bwd.register_fake
def _(dy, dfinal, x, dt, A, B, C, D, dt_bias, seq_idx, dt_out, a_out, cb, enter, chunk_size, dt_softplus,
      dt_min, dt_max):
    batch, _, heads, head_dim = x.shape
    state = B.shape[3]
    return (x.new_empty(x.shape), dt.new_empty(dt.shape), A.new_empty(A.shape), B.new_empty(B.shape),
            C.new_empty(C.shape), D.new_empty(D.shape) if D is not None else x.new_empty(0),
            dt_bias.new_empty(dt_bias.shape) if dt_bias is not None else x.new_empty(0),
            x.new_empty(batch, heads, head_dim, state, dtype=torch.float32))


def _setup_context(ctx, inputs, output):
    x, dt, A, B, C, D, dt_bias, initial_state, seq_idx, chunk_size, dt_softplus, dt_min, dt_max = inputs
    _, _, dt_out, a_out, cb, enter = output
    ctx.save_for_backward(x, dt, A, B, C, D, dt_bias, seq_idx, dt_out, a_out, cb, enter)
    ctx.init_dtype = initial_state.dtype if initial_state is not None else None
    ctx.options = (chunk_size, dt_softplus, dt_min, dt_max)
    ctx.mark_non_differentiable(dt_out, a_out, cb, enter)


def _backward(ctx, dy, dfinal, *_unused):
    x, dt, A, B, C, D, dt_bias, seq_idx, dt_out, a_out, cb, enter = ctx.saved_tensors
    chunk_size, dt_softplus, dt_min, dt_max = ctx.options
    dx, ddt, dA, dB, dC, dD, dbias, dinit = ssd_bwd(
        dy, dfinal, x, dt, A, B, C, D, dt_bias, seq_idx, dt_out, a_out, cb, enter, chunk_size, dt_softplus,
        dt_min, dt_max)
    return (dx, ddt, dA, dB, dC, dD if D is not None else None, dbias if dt_bias is not None else None,
            dinit.to(ctx.init_dtype) if ctx.init_dtype is not None else None,
            None, None, None, None, None)


ssd_fwd.register_autograd(_backward, setup_context=_setup_context)


def ssd(x, dt, A, B, C, chunk_size, D=None, dt_bias=None, dt_softplus=False, dt_limit=(0.0, math.inf),
        initial_state=None, seq_idx=None, return_final_state=False):
    """Drop-in for `ssd_chunked` on the Triton kernels."""
    y, final, *_ = ssd_fwd(x, dt, A, B, C, D, dt_bias, initial_state, seq_idx, int(chunk_size), bool(dt_softplus),
                           float(dt_limit[0]), float(dt_limit[1]))
    return (y, final) if return_final_state else y


@torch.library.custom_op("hybridcore::ssd_step", mutates_args=("state",))
def ssd_step_op(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, state: Tensor, D: Tensor | None,
                dt_bias: Tensor | None, dt_softplus: bool, dt_min: float, dt_max: float) -> Tensor:
    return triton_ssd_step.ssd_step(x, dt, A, B, C, state, D=D, dt_bias=dt_bias, dt_softplus=dt_softplus,
                                    dt_min=dt_min, dt_max=dt_max)


@ssd_step_op.register_fake
def _(x, dt, A, B, C, state, D, dt_bias, dt_softplus, dt_min, dt_max):
    return x.new_empty(x.shape)


def ssd_step(x, dt, A, B, C, state, D=None, dt_bias=None, dt_softplus=False, dt_limit=(0.0, math.inf)):
    """Drop-in for `ssd.ssd_step_ref` on the Triton kernel (inference only: no autograd). Eager calls launch
    the kernel directly: the custom op, which torch.compile needs, costs a third again of the launch's host
    time (about 35 of 113 us on an H200 host), once per layer and token. Triton's CPU interpreter keeps the
    op, which counts as one op in the launch tests (the interpreter's own tensor ops would count otherwise)."""
    if not torch.compiler.is_compiling() and not triton_ssd.INTERPRET:
        return triton_ssd_step.ssd_step(x, dt, A, B, C, state, D=D, dt_bias=dt_bias, dt_softplus=bool(dt_softplus),
                                        dt_min=float(dt_limit[0]), dt_max=float(dt_limit[1]))
    return ssd_step_op(x, dt, A, B, C, state, D, dt_bias, bool(dt_softplus), float(dt_limit[0]),
                       float(dt_limit[1]))


def step_supported(x: Tensor, B: Tensor, state: Tensor) -> bool:
    return (_inputs_supported(x, B) and x.shape[1] == 1 and state.dtype == torch.float32
            and state.is_contiguous() and not torch.is_grad_enabled())
