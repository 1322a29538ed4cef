"""The SwiGLU product in plain PyTorch: the twin of triton_decode.swiglu."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def swiglu_ref(gate: torch.Tensor, up: torch.Tensor, multiplier: float) -> torch.Tensor:
    """up * silu(gate * multiplier), each product rounded to the inputs' dtype."""
    return up * F.silu(gate * multiplier)
