"""Rotary position embedding (rotate-half style), cos/sin in fp32, on the first `rotary_dim` channels of
each head: all of them (Falcon-H1), a part (Bamba's partial RoPE: the rest pass unrotated) or none.

The cache paths build the rotation's tables once per forward (ops/rope.py); `apply_rope` builds them per call.

Frequencies are computed as transformers does (fp32 exponent of a float base, over the rotated width)
so that logits agree with it bit for bit where possible, also at theta = 1e11.
"""

from __future__ import annotations

import torch

from ..ops.rope import apply_rope_tables, rope_tables


def rope_cos_sin(positions: torch.Tensor, rotary_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [B, L] (any int dtype) -> cos, sin [B, L, rotary_dim] in fp32 (empty for rotary_dim 0)."""
    if rotary_dim == 0:  # no positional encoding: attention leaves q and k as they are
        empty = torch.zeros(*positions.shape, 0, device=positions.device)
        return empty, empty
    exponent = torch.arange(0, rotary_dim, 2, device=positions.device, dtype=torch.float32) / rotary_dim
    inv_freq = 1.0 / (theta ** exponent)
    angles = positions.float()[..., None] * inv_freq
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, L, heads, head_dim]; cos/sin [B, L, rotary_dim]: the first rotary_dim channels rotate, in fp32,
    the others pass; the result in x's dtype. (The rotation itself is the cache paths': ops/rope.py.)"""
    return apply_rope_tables(x, *rope_tables(cos, sin))
