"""Rotary embedding in the form the cache paths use (tables built once per forward, one roll per call), and
the decode step's query/key preparation in plain PyTorch: the twin of triton_decode.rope_cache_write.
model/rope.py computes the angles and holds the training path's rotation."""

from __future__ import annotations

import torch


def rope_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The cache paths' form of rope_cos_sin's output, built once per forward for every attention layer:
    cos and sin [B, L, 1, rotary_dim], sin negated on its first half, so that `apply_rope_tables` rotates
    with one roll where apply_rope takes two slices, a negation and a concatenation."""
    half = sin.shape[-1] // 2
    return cos[:, :, None, :], torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)[:, :, None, :]


def apply_rope_tables(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """apply_rope's result, bit for bit, from `rope_tables`: cat(-x2, x1) * sin = roll(x) * signed sin,
    as (-a) * b and a * (-b) round alike."""
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
                         keys: torch.Tensor, values: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """One token per row: q [B, 1, Hq * D], k and v [B, 1, Hkv * D] as the projections give them; k times
    the key multiplier, q and k rotated in one call over their concatenation, q times the query multiplier
    (if any); k and v written into keys and values [B, Hkv, S, D] at `slot` [1]. Returns q [B, 1, Hq, D]."""
    batch, head_dim = q.shape[0], keys.shape[-1]
    q_heads, kv_heads = q.shape[-1] // head_dim, keys.shape[1]
    qk = torch.cat([q, k * key_multiplier], dim=-1).view(batch, 1, -1, head_dim)
    q, k = apply_rope_tables(qk, cos, signed_sin).split([q_heads, kv_heads], dim=2)
    if query_multiplier is not None:
        q = q * query_multiplier
    keys.index_copy_(2, slot, k.transpose(1, 2))  # [B, Hkv, 1, D]: a length-1 dimension moves by a view
    values.index_copy_(2, slot, v.view(batch, kv_heads, 1, head_dim))
    return q
