"""Triton kernel for one decoding step of the SSD recurrence, updating the cached state in place.
Twin: `ssd.ssd_step_ref` (the token-by-token recurrence for one token).

    dt' = clamp(softplus(dt + dt_bias))        state = exp(dt' A) state + dt' x B^T        y = state C + D x

Decoding is launch-bound: the reference spends some forty small ops per layer and token on this; here
it is one launch. Each program owns BLOCK_P rows of one head's [P, N] state.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_ssd import INTERPRET, _limit, _softplus


@triton.jit
def _ssd_step_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, state_ptr, y_ptr, H, G, P, N,
                     s_x_b, s_x_h, s_x_p, s_dt_b, s_dt_h, s_B_b, s_B_g, s_B_n, s_C_b, s_C_g, s_C_n,
                     s_y_b, s_y_h, s_y_p, dt_min, dt_max,
                     HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_LIMIT: tl.constexpr,
                     BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_h = tl.program_id(1)
    pid_g = pid_h // (H // G)
    offs_p = tl.program_id(2) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    p_ok = offs_p < P
    n_ok = offs_n < N

    dt = tl.load(dt_ptr + pid_b * s_dt_b + pid_h * s_dt_h).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + pid_h).to(tl.float32)
    if SOFTPLUS:
        dt = _softplus(dt)
    if HAS_LIMIT:
        dt = tl.minimum(tl.maximum(dt, dt_min), dt_max)
    decay = tl.exp(dt * tl.load(A_ptr + pid_h).to(tl.float32))

    x = tl.load(x_ptr + pid_b * s_x_b + pid_h * s_x_h + offs_p * s_x_p, mask=p_ok, other=0.0).to(tl.float32)
    b = tl.load(B_ptr + pid_b * s_B_b + pid_g * s_B_g + offs_n * s_B_n, mask=n_ok, other=0.0).to(tl.float32)
    c = tl.load(C_ptr + pid_b * s_C_b + pid_g * s_C_g + offs_n * s_C_n, mask=n_ok, other=0.0).to(tl.float32)
    state_ptrs = state_ptr + ((pid_b * H + pid_h) * P + offs_p[:, None]) * N + offs_n[None, :]
    tile = p_ok[:, None] & n_ok[None, :]
    state = tl.load(state_ptrs, mask=tile, other=0.0)
    state = state * decay + (dt * x)[:, None] * b[None, :]
    tl.store(state_ptrs, state, mask=tile)
    y = tl.sum(state * c[None, :], axis=1)
    if HAS_D:
        y += tl.load(D_ptr + pid_h).to(tl.float32) * x
    tl.store(y_ptr + pid_b * s_y_b + pid_h * s_y_h + offs_p * s_y_p, y.to(y_ptr.dtype.element_ty), mask=p_ok)


def ssd_step(x, dt, A, B, C, state, D=None, dt_bias=None, dt_softplus=False, dt_min=0.0, dt_max=float("inf")):
    """x [b, 1, H, P], dt [b, 1, H], B and C [b, 1, G, N], state [b, H, P, N] fp32 contiguous (updated in
    place) -> y [b, 1, H, P] in x's dtype."""
    batch, _, heads, head_dim = x.shape
    groups, n = B.shape[2], B.shape[3]
    y = torch.empty_like(x)
    block_p = 16 if INTERPRET else min(32, triton.next_power_of_2(head_dim))
    block_n = triton.next_power_of_2(n)
    # the tensors themselves with the strides of their token 0 (no [:, 0] views: fewer host ops per launch)
    _ssd_step_kernel[(batch, heads, triton.cdiv(head_dim, block_p))](
        x, dt, A, B, C, D if D is not None else A, dt_bias if dt_bias is not None else A, state, y,
        heads, groups, head_dim, n, *_token_strides(x), *_token_strides(dt), *_token_strides(B), *_token_strides(C),
        *_token_strides(y),
        float(dt_min), float(dt_max), HAS_D=D is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus),
        HAS_LIMIT=_limit(dt_min, dt_max), BLOCK_P=block_p, BLOCK_N=block_n, num_warps=4)
    return y


def _token_strides(t: torch.Tensor) -> tuple[int, ...]:
    """Strides of t[:, 0] for t [b, 1, ...]."""
    strides = t.stride()
    return (strides[0], *strides[2:])
