"""Rotary position embedding on the full head dimension (rotate-half style), cos/sin in fp32.

Frequencies are computed as transformers' Falcon-H1 does (fp32 exponent of a float base) so that
logits agree with it bit for bit where possible, also at theta = 1e11.
"""

from __future__ import annotations

import torch


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [B, L] (any int dtype) -> cos, sin [B, L, head_dim] in fp32."""
    exponent = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim
    inv_freq = 1.0 / (theta ** exponent)
    angles = positions.float()[..., None] * inv_freq
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, L, heads, head_dim]; cos/sin [B, L, head_dim]. Rotation done in fp32, result in x's dtype."""
    x_fp32 = x.float()
    half = x.shape[-1] // 2
    rotated = torch.cat((-x_fp32[..., half:], x_fp32[..., :half]), dim=-1)
    out = x_fp32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.to(x.dtype)
