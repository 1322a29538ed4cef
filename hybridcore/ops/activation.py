"""The SwiGLU product in plain PyTorch: the twin of triton_decode.swiglu."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def swiglu_ref(gate: torch.Tensor, up: torch.Tensor, multiplier: float) -> torch.Tensor:
    """up * silu(gate * multiplier), each product rounded to the inputs' dtype (a multiplier of 1 is
    exact, so no product: the Mamba-2 gate y * silu(z) is this too)."""
    return up * F.silu(gate * multiplier if multiplier != 1 else gate)
