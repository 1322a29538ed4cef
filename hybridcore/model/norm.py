"""RMSNorm, statistics in fp32. (The Mamba-2 output's gated, grouped norm is an op: hybridcore.ops.)"""

from __future__ import annotations

import torch
from torch import nn

from .plan import REPLICATE


class RMSNorm(nn.Module):
    parallel_plan = {"weight": REPLICATE}

    def __init__(self, dim: int, eps: float = 1e-5, weight_in_fp32: bool = False):
        super().__init__()
        self.eps = eps
        self.weight_in_fp32 = weight_in_fp32
        self.weight = nn.Parameter(torch.empty(dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_fp32 = x.float()
        x_fp32 = x_fp32 * torch.rsqrt(x_fp32.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight_in_fp32:  # Nemotron-H (Megatron's fused norm): weight in fp32, then round once
            return (self.weight.float() * x_fp32).to(x.dtype)
        # Cast back before the weight, as Falcon-H1 (and Llama) do.
        return self.weight * x_fp32.to(x.dtype)
