"""Triton causal depthwise conv1d with document resets, forward and backward. Twin: `conv.causal_conv1d_ref`.

x [B, L, C] channels last (any strides, e.g. a slice of the in_proj output), weight [C, K], bias [C],
initial_state [B, C, K-1] (the inputs before x, in the first token's document), seq_idx [B, L].
    y[t, c] = bias[c] + sum_k w[c, k] x[t - (K-1) + k, c]   over taps in t's document
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_autotune import autotune
from .triton_ssd import INTERPRET, _configs

# The backward's weight-gradient partials are laid out per block of L, so its BLOCK_L is fixed here and
# autotuning varies the channel block and warps only.
BWD_BLOCK_L = 16 if INTERPRET else 64


@autotune(
    configs=_configs([(dict(BLOCK_L=64, BLOCK_C=128), 4, 1), (dict(BLOCK_L=32, BLOCK_C=128), 4, 1),
                      (dict(BLOCK_L=128, BLOCK_C=64), 4, 1), (dict(BLOCK_L=64, BLOCK_C=256), 8, 1),
                      (dict(BLOCK_L=128, BLOCK_C=128), 8, 1), (dict(BLOCK_L=32, BLOCK_C=64), 2, 1)],
                     dict(BLOCK_L=16, BLOCK_C=16)),
    key=["C", "K"])
@triton.jit
def _conv_fwd_kernel(x_ptr, w_ptr, bias_ptr, init_ptr, seq_ptr, y_ptr, L, C,
                     s_x_b, s_x_l, s_x_c, s_i_b, s_i_c, s_i_k, s_seq_b, s_seq_l, s_y_b, s_y_l, s_y_c,
                     K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr,
                     BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    offs_l = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    l_ok = offs_l < L
    acc = tl.zeros((BLOCK_L, BLOCK_C), dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_SEQ:
        seq_base = seq_ptr + pid_b * s_seq_b
        doc_t = tl.load(seq_base + offs_l * s_seq_l, mask=l_ok, other=0)
    for k in tl.static_range(K):
        src = offs_l - (K - 1) + k
        w = tl.load(w_ptr + offs_c * K + k, mask=c_ok, other=0.0).to(tl.float32)
        v = tl.load(x_ptr + pid_b * s_x_b + src[:, None] * s_x_l + offs_c[None, :] * s_x_c,
                    mask=((src >= 0) & l_ok)[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
        if HAS_INIT:  # taps before the sequence read the initial state
            v += tl.load(init_ptr + pid_b * s_i_b + offs_c[None, :] * s_i_c + (src + K - 1)[:, None] * s_i_k,
                         mask=((src < 0) & l_ok)[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
        if HAS_SEQ:
            doc_src = tl.load(seq_base + tl.maximum(src, 0) * s_seq_l, mask=l_ok, other=0)
            v = tl.where((doc_src == doc_t)[:, None], v, 0.0)
        acc += v * w[None, :]
    tl.store(y_ptr + pid_b * s_y_b + offs_l[:, None] * s_y_l + offs_c[None, :] * s_y_c,
             acc.to(y_ptr.dtype.element_ty), mask=l_ok[:, None] & c_ok[None, :])


@autotune(
    configs=_configs([(dict(BLOCK_C=128), 4, 1), (dict(BLOCK_C=64), 4, 1), (dict(BLOCK_C=256), 8, 1),
                      (dict(BLOCK_C=128), 8, 1), (dict(BLOCK_C=64), 2, 1)], dict(BLOCK_C=16)),
    key=["C", "K"])
@triton.jit
def _conv_bwd_kernel(x_ptr, w_ptr, init_ptr, seq_ptr, dy_ptr, dx_ptr, dw_part_ptr, db_part_ptr, L, C,
                     s_x_b, s_x_l, s_x_c, s_i_b, s_i_c, s_i_k, s_seq_b, s_seq_l, s_dy_b, s_dy_l, s_dy_c,
                     s_dx_b, s_dx_l, s_dx_c,
                     K: tl.constexpr, HAS_INIT: tl.constexpr, HAS_SEQ: tl.constexpr,
                     BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_l = tl.program_id(1)
    num_l = tl.num_programs(1)
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    l_ok = offs_l < L
    dy_base = dy_ptr + pid_b * s_dy_b
    dy_t = tl.load(dy_base + offs_l[:, None] * s_dy_l + offs_c[None, :] * s_dy_c, mask=l_ok[:, None] & c_ok[None, :],
                   other=0.0).to(tl.float32)
    if HAS_SEQ:
        seq_base = seq_ptr + pid_b * s_seq_b
        doc_t = tl.load(seq_base + offs_l * s_seq_l, mask=l_ok, other=0)
    part = ((pid_b * num_l + pid_l) * C + offs_c)  # partial sums per (batch, block of L)
    tl.store(db_part_ptr + part, tl.sum(dy_t, axis=0), mask=c_ok)
    dx = tl.zeros((BLOCK_L, BLOCK_C), dtype=tl.float32)
    for k in tl.static_range(K):
        w = tl.load(w_ptr + offs_c * K + k, mask=c_ok, other=0.0).to(tl.float32)
        # weight: dy[t] times the input tap k reads for t
        src = offs_l - (K - 1) + k
        v = tl.load(x_ptr + pid_b * s_x_b + src[:, None] * s_x_l + offs_c[None, :] * s_x_c,
                    mask=((src >= 0) & l_ok)[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
        if HAS_INIT:
            v += tl.load(init_ptr + pid_b * s_i_b + offs_c[None, :] * s_i_c + (src + K - 1)[:, None] * s_i_k,
                         mask=((src < 0) & l_ok)[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
        if HAS_SEQ:
            doc_src = tl.load(seq_base + tl.maximum(src, 0) * s_seq_l, mask=l_ok, other=0)
            v = tl.where((doc_src == doc_t)[:, None], v, 0.0)
        tl.store(dw_part_ptr + part * K + k, tl.sum(v * dy_t, axis=0), mask=c_ok)
        # input: x[t] feeds y[t + (K-1) - k] through tap k
        dst = offs_l + (K - 1) - k
        dst_ok = dst < L
        g = tl.load(dy_base + dst[:, None] * s_dy_l + offs_c[None, :] * s_dy_c, mask=dst_ok[:, None] & c_ok[None, :],
                    other=0.0).to(tl.float32)
        if HAS_SEQ:
            doc_dst = tl.load(seq_base + dst * s_seq_l, mask=dst_ok, other=0)
            g = tl.where((doc_dst == doc_t)[:, None], g, 0.0)
        dx += g * w[None, :]
    tl.store(dx_ptr + pid_b * s_dx_b + offs_l[:, None] * s_dx_l + offs_c[None, :] * s_dx_c,
             dx.to(dx_ptr.dtype.element_ty), mask=l_ok[:, None] & c_ok[None, :])


def _init_args(initial_state, like):
    if initial_state is None:
        return like, 0, 0, 0
    return (initial_state, *initial_state.stride())


def _seq(seq_idx, like):
    return (like, 0, 0) if seq_idx is None else (seq_idx, *seq_idx.stride())


def conv_forward(x, weight, bias=None, seq_idx=None, initial_state=None):
    batch, length, channels = x.shape
    y = torch.empty(batch, length, channels, device=x.device, dtype=x.dtype)
    init, *s_init = _init_args(initial_state, x)
    seq, *s_seq = _seq(seq_idx, x)
    _conv_fwd_kernel[lambda m: (batch, triton.cdiv(length, m["BLOCK_L"]), triton.cdiv(channels, m["BLOCK_C"]))](
        x, weight, bias if bias is not None else weight, init, seq, y, length, channels, *x.stride(), *s_init,
        *s_seq, *y.stride(), K=weight.shape[1], HAS_BIAS=bias is not None, HAS_INIT=initial_state is not None,
        HAS_SEQ=seq_idx is not None)
    return y


def conv_backward(dy, x, weight, seq_idx=None, initial_state=None):
    """(dx, dweight [C, K] fp32, dbias [C] fp32, d initial_state or None)."""
    batch, length, channels = x.shape
    width = weight.shape[1]
    num_l = triton.cdiv(length, BWD_BLOCK_L)
    dx = torch.empty(batch, length, channels, device=x.device, dtype=x.dtype)
    dw_part = torch.empty(batch, num_l, channels, width, device=x.device, dtype=torch.float32)
    db_part = torch.empty(batch, num_l, channels, device=x.device, dtype=torch.float32)
    init, *s_init = _init_args(initial_state, x)
    seq, *s_seq = _seq(seq_idx, x)
    _conv_bwd_kernel[lambda m: (batch, num_l, triton.cdiv(channels, m["BLOCK_C"]))](
        x, weight, init, seq, dy, dx, dw_part, db_part, length, channels, *x.stride(), *s_init, *s_seq,
        *dy.stride(), *dx.stride(), K=width, HAS_INIT=initial_state is not None, HAS_SEQ=seq_idx is not None,
        BLOCK_L=BWD_BLOCK_L)
    dinit = None
    if initial_state is not None:
        # the K-1 state slots only reach the first K-1 outputs: a few small products
        dinit = torch.zeros(batch, channels, width - 1, device=x.device, dtype=torch.float32)
        keep = None
        if seq_idx is not None:
            keep = (seq_idx[:, : width - 1] == seq_idx[:, :1]).float()  # [B, <=K-1]
        for j in range(width - 1):  # slot j sits at position j - (K-1)
            for k in range(j + 1):  # output t = j - k reads slot j through tap k
                t = j - k
                if t >= length:
                    continue
                g = dy[:, t].float() * weight[:, k].float()
                if keep is not None:
                    g = g * keep[:, t, None]
                dinit[:, :, j] += g
    return dx, dw_part.sum((0, 1)), db_part.sum((0, 1)), dinit
