"""Decode attention: one token per row against a static-shape key/value cache, split over the keys.

SDPA's fused kernels give each (row, key/value head) one program that walks every key; at batch 1 that
is two programs on a GPU of 132 SMs. Here each program takes one split of the keys (up to MAX_SPLITS per
row and head, about two programs per SM where rows are few) and keeps fp32 partial results (running max,
sum of exponentials, weighted values), and a second kernel combines the splits in one load each
(flash-decoding). Keys past the decoding slot are masked out by the caller's mask, so the programs skip
them. Twin: attention.decode_attention_ref (SDPA with the same additive mask).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl


@triton.jit
def _store_heads(out_ptr, b, h, offs_g, offs_d, G, D, s_o_b, s_o_h, s_o_g, out):
    """out [G, D] (fp32) to the output's query heads of (row b, key/value head h), in its dtype."""
    tl.store(out_ptr + b * s_o_b + h * s_o_h + offs_g[:, None] * s_o_g + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=(offs_g < G)[:, None] & (offs_d < D)[None, :])


@triton.jit
def _decode_split_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, slot_ptr, part_ptr, out_ptr, KV, G, D, S, split_len,
                         s_q_b, s_q_h, s_q_g, s_k_b, s_k_h, s_k_s, s_v_b, s_v_h, s_v_s, s_mask_b, s_o_b, s_o_h,
                         s_o_g, scale, FINAL: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_D: tl.constexpr):
    bh = tl.program_id(0)
    split = tl.program_id(1)
    b = (bh // KV).to(tl.int64)
    h = (bh % KV).to(tl.int64)
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    g_ok, d_ok = offs_g < G, offs_d < D
    q = tl.load(q_ptr + b * s_q_b + h * s_q_h + offs_g[:, None] * s_q_g + offs_d[None, :],
                mask=g_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32) * scale
    start = split * split_len
    end = tl.minimum(tl.minimum(start + split_len, S), tl.load(slot_ptr) + 1)  # no key after the slot is seen
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        n = n0 + offs_n
        n_ok = n < end
        kv_ok = n_ok[:, None] & d_ok[None, :]
        k = tl.load(k_ptr + b * s_k_b + h * s_k_h + n[:, None] * s_k_s + offs_d[None, :], mask=kv_ok, other=0.0)
        scores = tl.sum(q[:, None, :] * k.to(tl.float32)[None, :, :], axis=2)  # [G, N]
        scores += tl.load(mask_ptr + b * s_mask_b + n, mask=n_ok, other=float("-inf")).to(tl.float32)[None, :]
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # every key so far masked: nothing to rescale
        alpha = tl.exp(m_i - m_ref)
        p = tl.exp(scores - m_ref[:, None])
        v = tl.load(v_ptr + b * s_v_b + h * s_v_h + n[:, None] * s_v_s + offs_d[None, :], mask=kv_ok, other=0.0)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v.to(tl.float32)[None, :, :], axis=1)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        m_i = m_new
    if FINAL:  # one split: this program's result is the output
        _store_heads(out_ptr, b, h, offs_g, offs_d, G, D, s_o_b, s_o_h, s_o_g, acc / l_i[:, None])
    else:  # part [B*KV, splits, G, D + 2]: the weighted values, then the max and the sum
        row = part_ptr + ((bh * tl.num_programs(1) + split) * G + offs_g) * (D + 2)
        tl.store(row[:, None] + offs_d[None, :], acc, mask=g_ok[:, None] & d_ok[None, :])
        tl.store(row + D, m_i, mask=g_ok)
        tl.store(row + D + 1, l_i, mask=g_ok)


@triton.jit
def _decode_combine_kernel(part_ptr, out_ptr, KV, G, D, SPLITS, s_o_b, s_o_h, s_o_g,
                           BLOCK_S: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr):
    # every split's partials in one load (no loop of dependent steps): [splits, G] maxima and sums,
    # [splits, G, D] weighted values
    bh = tl.program_id(0)
    b = (bh // KV).to(tl.int64)
    h = (bh % KV).to(tl.int64)
    offs_s = tl.arange(0, BLOCK_S)
    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    sg_ok = (offs_s < SPLITS)[:, None] & (offs_g < G)[None, :]
    rows = part_ptr + ((bh * SPLITS + offs_s[:, None]) * G + offs_g[None, :]) * (D + 2)  # [S, G]
    m_s = tl.load(rows + D, mask=sg_ok, other=float("-inf"))
    m = tl.max(m_s, axis=0)
    weight = tl.exp(m_s - tl.where(m == float("-inf"), 0.0, m)[None, :])  # 0 for an empty split
    total = tl.sum(weight * tl.load(rows + D + 1, mask=sg_ok, other=0.0), axis=0)
    d_ok = offs_d < D
    acc = tl.load(rows[:, :, None] + offs_d[None, None, :], mask=sg_ok[:, :, None] & d_ok[None, None, :], other=0.0)
    out = tl.sum(weight[:, :, None] * acc, axis=0) / total[:, None]
    _store_heads(out_ptr, b, h, offs_g, offs_d, G, D, s_o_b, s_o_h, s_o_g, out)


MAX_SPLITS = 32


@functools.cache
def _programs_wanted(device: torch.device) -> int:
    """About two programs per SM keep the GPU busy; the CPU interpreter runs a few."""
    if device.type != "cuda":
        return 4
    return 2 * torch.cuda.get_device_properties(device).multi_processor_count


def decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                     slot: torch.Tensor) -> torch.Tensor:
    """q [B, KV, G, D] (the G query heads of each key/value head, unit stride on D), keys and values
    [B, KV, S, D] (unit stride on D), mask [B, 1, 1, S] additive (unit stride on S; -inf after `slot`),
    slot [1] long -> [B, KV, G, D] in q's dtype. The number of splits depends on the shapes only, so a
    CUDA graph can replay the step."""
    batch, kv_heads, group, head_dim = q.shape
    length = keys.shape[2]
    block_g, block_d = triton.next_power_of_2(group), triton.next_power_of_2(head_dim)
    # the [G, N, D] products stay within about 8K fp32 values per program
    block_n = max(16, min(128, 8192 // (block_g * block_d)))
    tiles = triton.cdiv(length, block_n)
    # at most MAX_SPLITS, whose partials the second kernel loads at once (also within about 8K values)
    max_splits = max(1, min(MAX_SPLITS, 8192 // (block_g * block_d)))
    splits = max(1, min(tiles, max_splits, triton.cdiv(_programs_wanted(q.device), batch * kv_heads)))
    split_len = triton.cdiv(tiles, splits) * block_n
    splits = triton.cdiv(length, split_len)
    out = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    part = out if splits == 1 else torch.empty(batch * kv_heads, splits, group, head_dim + 2, device=q.device,
                                               dtype=torch.float32)
    out_strides = (out.stride(0), out.stride(1), out.stride(2))
    _decode_split_kernel[(batch * kv_heads, splits)](
        q, keys, values, mask, slot, part, out, kv_heads, group, head_dim, length, split_len,
        q.stride(0), q.stride(1), q.stride(2), keys.stride(0), keys.stride(1), keys.stride(2),
        values.stride(0), values.stride(1), values.stride(2), mask.stride(0), *out_strides, head_dim ** -0.5,
        FINAL=splits == 1, BLOCK_G=block_g, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=4)
    if splits > 1:
        _decode_combine_kernel[(batch * kv_heads,)](part, out, kv_heads, group, head_dim, splits, *out_strides,
                                                    BLOCK_S=triton.next_power_of_2(splits), BLOCK_G=block_g,
                                                    BLOCK_D=block_d, num_warps=4)
    return out
