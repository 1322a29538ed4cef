"""Rotary embedding in the form the cache paths use (tables built once per forward, one roll per call), and
the decode step's query/key preparation in plain PyTorch: the twin of triton_decode.rope_cache_write.
model/rope.py computes the angles and holds the training path's rotation."""

from __future__ import annotations

import torch


def rope_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """rope_cos_sin's output [B, L, rotary_dim] as cos and sin [B, L, 1, rotary_dim], sin negated on its
    first half, so that `apply_rope_tables` rotates with one roll (rotate-half's cat(-x2, x1) * sin is
    roll(x) * signed sin, as (-a) * b and a * (-b) round alike). The cache paths build them once per forward
    for every attention layer."""
    half = sin.shape[-1] // 2
    return cos[:, :, None, :], torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)[:, :, None, :]


def apply_rope_tables(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x [B, L, heads, head_dim] rotated (rotate-half style) on its first rotary_dim channels, in fp32, the
    others passed; the result in x's dtype. cos and signed_sin from `rope_tables`."""
    rotary = cos.shape[-1]
    if rotary == 0:
        return x
    if rotary < x.shape[-1]:
        return torch.cat((apply_rope_tables(x[..., :rotary], cos, signed_sin), x[..., rotary:]), dim=-1)
    x_fp32 = x.float()
    out = x_fp32 * cos + torch.roll(x_fp32, rotary // 2, dims=-1) * signed_sin
    return out.to(x.dtype)


def rope_cache_write_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor,
                         signed_sin: torch.Tensor, key_multiplier: float, query_multiplier: float | None,
                         keys: torch.Tensor, values: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """L tokens per row: q [B, L, Hq * D], k and v [B, L, Hkv * D] as the projections give them; k times
    the key multiplier, q and k rotated in one call over their concatenation, q times the query multiplier
    (if any); k and v written into keys and values [B, Hkv, S, D] at `slots` [L]. Returns q [B, L, Hq, D]."""
    batch, length, head_dim = q.shape[0], q.shape[1], keys.shape[-1]
    q_heads, kv_heads = q.shape[-1] // head_dim, keys.shape[1]
    qk = torch.cat([q, k * key_multiplier], dim=-1).view(batch, length, -1, head_dim)
    q, k = apply_rope_tables(qk, cos, signed_sin).split([q_heads, kv_heads], dim=2)
    if query_multiplier is not None:
        q = q * query_multiplier
    keys.index_copy_(2, slots, k.transpose(1, 2))
    values.index_copy_(2, slots, v.view(batch, length, kv_heads, head_dim).transpose(1, 2))
    return q
