"""Triton kernels for inference (prefill and decode): each replaces a run of small PyTorch ops with one
launch, rounding where the PyTorch ops round, so the results match their twins up to the order of a sum.

    rms_norm          norm.rms_norm_ref             cast, square, mean, add, rsqrt, mul, cast, mul
    conv_step         conv.causal_conv1d_step_ref   one token of the depthwise conv + SiLU, window shifted in place
    rope_cache_write  rope.rope_cache_write_ref     key multiplier, rope of q and k, k and v into their cache slots
    swiglu            activation.swiglu_ref         up * silu(gate * multiplier)

No autograd: the dispatchers (ops/__init__.py) use them only where gradients are off.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(x_ptr, w_ptr, out_ptr, D, s_x, s_o, eps,
                     WEIGHT_FP32: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    ok = offs < D
    x = tl.load(x_ptr + row * s_x + offs, mask=ok, other=0.0).to(tl.float32)
    normed = x / tl.sqrt(tl.sum(x * x, axis=0) / D + eps)
    w = tl.load(w_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    if WEIGHT_FP32:  # the weight in fp32, then one rounding
        out = w * normed
    else:  # round to x's dtype before the weight, as the reference does
        out = w * normed.to(x_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * s_o + offs, out.to(out_ptr.dtype.element_ty), mask=ok)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, weight_in_fp32: bool) -> torch.Tensor:
    """x [..., D] with unit stride on D -> the norm in x's dtype (weight_in_fp32) or in the dtype of
    weight * x (the reference's promotion)."""
    width = x.shape[-1]
    rows = x.reshape(-1, width)
    dtype = x.dtype if weight_in_fp32 else torch.promote_types(weight.dtype, x.dtype)
    out = torch.empty(rows.shape, device=x.device, dtype=dtype)
    block = triton.next_power_of_2(width)
    _rms_norm_kernel[(rows.shape[0],)](rows, weight, out, width, rows.stride(0), out.stride(0), float(eps),
                                       WEIGHT_FP32=weight_in_fp32, BLOCK=block, num_warps=8 if block >= 4096 else 4)
    return out.view(x.shape)


@triton.jit
def _conv_step_kernel(x_ptr, state_ptr, w_ptr, bias_ptr, out_ptr, C, K, s_x_b, s_out_b,
                      HAS_BIAS: tl.constexpr, SILU: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_k = tl.arange(0, BLOCK_K)
    c_ok = offs_c < C
    history = K - 1
    x = tl.load(x_ptr + b * s_x_b + offs_c, mask=c_ok, other=0.0)
    state = state_ptr + (b * C + offs_c[:, None]) * history
    # the window: the K-1 inputs in the state, then this token's
    past = tl.load(state + offs_k[None, :], mask=c_ok[:, None] & (offs_k[None, :] < history), other=0.0)
    window = tl.where(offs_k[None, :] == history, x[:, None], past)
    # the next state: the window shifted by one
    later = tl.load(state + offs_k[None, :] + 1, mask=c_ok[:, None] & (offs_k[None, :] + 1 < history), other=0.0)
    shifted = tl.where(offs_k[None, :] + 1 == history, x[:, None], later)
    w = tl.load(w_ptr + offs_c[:, None] * K + offs_k[None, :], mask=c_ok[:, None] & (offs_k[None, :] < K), other=0.0)
    y = tl.sum(window.to(tl.float32) * w.to(tl.float32), axis=1)
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs_c, mask=c_ok, other=0.0).to(tl.float32)
    y = y.to(out_ptr.dtype.element_ty).to(tl.float32)  # the conv's output, rounded, then the activation
    if SILU:
        y = y / (1.0 + tl.exp(-y))
    tl.store(state + offs_k[None, :], shifted, mask=c_ok[:, None] & (offs_k[None, :] < history))
    tl.store(out_ptr + b * s_out_b + offs_c, y.to(out_ptr.dtype.element_ty), mask=c_ok)


def conv_step(x: torch.Tensor, state: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
              silu: bool) -> torch.Tensor:
    """x [B, C] (unit stride on C), state [B, C, K-1] contiguous, updated in place, weight [C, K]
    contiguous -> y [B, C] in x's dtype."""
    batch, channels = x.shape
    width = weight.shape[-1]
    out = torch.empty(batch, channels, device=x.device, dtype=x.dtype)
    block_c = min(256, triton.next_power_of_2(channels))
    _conv_step_kernel[(batch, triton.cdiv(channels, block_c))](
        x, state, weight, bias if bias is not None else weight, out, channels, width, x.stride(0), out.stride(0),
        HAS_BIAS=bias is not None, SILU=silu, BLOCK_C=block_c, BLOCK_K=triton.next_power_of_2(width), num_warps=4)
    return out


@triton.jit
def _rope_cache_write_kernel(q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, q_out_ptr, keys_ptr, values_ptr, slots_ptr,
                             HQ, D, R, s_q_b, s_q_l, s_k_b, s_k_l, s_v_b, s_v_l, s_cos_b, s_cos_l, s_sin_b, s_sin_l,
                             s_qo_b, s_qo_l, s_cache_b, s_cache_h, s_cache_s, key_multiplier, query_multiplier,
                             HAS_QUERY_MULTIPLIER: tl.constexpr, BLOCK_D: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    head = tl.program_id(2)
    offs = tl.arange(0, BLOCK_D)
    ok = offs < D
    rotary = offs < R
    partner = tl.where(rotary, (offs + R // 2) % tl.maximum(R, 1), offs)  # roll by half the rotated width
    cos = tl.load(cos_ptr + b * s_cos_b + token * s_cos_l + offs, mask=ok & rotary, other=1.0)
    sin = tl.load(sin_ptr + b * s_sin_b + token * s_sin_l + offs, mask=ok & rotary, other=0.0)
    if head < HQ:
        row = q_ptr + b * s_q_b + token * s_q_l + head * D
        x = tl.load(row + offs, mask=ok, other=0.0).to(tl.float32)
        x_partner = tl.load(row + partner, mask=ok, other=0.0).to(tl.float32)
        out = tl.where(rotary, x * cos + x_partner * sin, x).to(q_out_ptr.dtype.element_ty)
        if HAS_QUERY_MULTIPLIER:
            out = (out.to(tl.float32) * query_multiplier).to(q_out_ptr.dtype.element_ty)
        tl.store(q_out_ptr + b * s_qo_b + token * s_qo_l + head * D + offs, out, mask=ok)
    else:
        kv_head = head - HQ
        row = k_ptr + b * s_k_b + token * s_k_l + kv_head * D
        dtype = keys_ptr.dtype.element_ty
        # the key multiplier rounds before the rotation, as the reference's separate product does
        x = (tl.load(row + offs, mask=ok, other=0.0).to(tl.float32) * key_multiplier).to(dtype).to(tl.float32)
        x_partner = (tl.load(row + partner, mask=ok, other=0.0).to(tl.float32) * key_multiplier)
        x_partner = x_partner.to(dtype).to(tl.float32)
        out = tl.where(rotary, x * cos + x_partner * sin, x).to(dtype)
        slot = tl.load(slots_ptr + token)
        at = b * s_cache_b + kv_head * s_cache_h + slot * s_cache_s + offs
        tl.store(keys_ptr + at, out, mask=ok)
        v = tl.load(v_ptr + b * s_v_b + token * s_v_l + kv_head * D + offs, mask=ok, other=0.0)
        tl.store(values_ptr + at, v.to(dtype), mask=ok)


def rope_cache_write(q, k, v, cos, signed_sin, key_multiplier, query_multiplier, keys, values, slots):
    """q [B, L, Hq * D], k and v [B, L, Hkv * D] (unit stride within a token), cos and signed_sin
    [B, L, 1, R] fp32 (rope.rope_tables), keys and values [B, Hkv, S, D] with unit stride on D, slots [L]
    long (in the cache's range). Writes the rotated keys and the values at `slots`; returns the rotated
    queries [B, L, Hq, D]."""
    batch, length, head_dim = q.shape[0], q.shape[1], keys.shape[-1]
    q_heads, kv_heads = q.shape[-1] // head_dim, keys.shape[1]
    rotary = cos.shape[-1]
    q_out = torch.empty(batch, length, q_heads, head_dim, device=q.device, dtype=q.dtype)
    _rope_cache_write_kernel[(length, batch, q_heads + kv_heads)](
        q, k, v, cos, signed_sin, q_out, keys, values, slots, q_heads, head_dim, rotary,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), cos.stride(0), cos.stride(1),
        signed_sin.stride(0), signed_sin.stride(1), q_out.stride(0), q_out.stride(1),
        keys.stride(0), keys.stride(1), keys.stride(2), float(key_multiplier),
        float(query_multiplier) if query_multiplier is not None else 1.0,
        HAS_QUERY_MULTIPLIER=query_multiplier is not None, BLOCK_D=triton.next_power_of_2(head_dim), num_warps=1)
    return q_out


@triton.jit
def _swiglu_kernel(gate_ptr, up_ptr, out_ptr, D, s_gate, s_up, s_out, multiplier, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < D
    dtype = out_ptr.dtype.element_ty
    gate = tl.load(gate_ptr + row * s_gate + offs, mask=ok, other=0.0).to(tl.float32)
    gate = (gate * multiplier).to(dtype).to(tl.float32)
    activated = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
    up = tl.load(up_ptr + row * s_up + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * s_out + offs, (up * activated).to(dtype), mask=ok)


def swiglu(gate: torch.Tensor, up: torch.Tensor, multiplier: float) -> torch.Tensor:
    """gate and up of one shape and dtype, unit stride on the last dimension (rows may be slices of a
    wider tensor) -> up * silu(gate * multiplier), contiguous."""
    width = up.shape[-1]
    gate_rows, up_rows = gate.reshape(-1, width), up.reshape(-1, width)
    out = torch.empty(up.shape, device=up.device, dtype=up.dtype)
    block = min(1024, triton.next_power_of_2(width))
    _swiglu_kernel[(up_rows.shape[0], triton.cdiv(width, block))](
        gate_rows, up_rows, out, width, gate_rows.stride(0), up_rows.stride(0), width, float(multiplier),
        BLOCK=block, num_warps=4)
    return out
