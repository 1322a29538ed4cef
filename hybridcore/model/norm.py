"""RMSNorm, statistics in fp32. (The Mamba-2 output's gated, grouped norm is an op: hybridcore.ops.)"""

from __future__ import annotations

import torch
from torch import nn

from ..ops import rms_norm
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
        # weight_in_fp32: Nemotron-H (Megatron's fused norm); else cast back before the weight (Falcon-H1)
        return rms_norm(x, self.weight, self.eps, self.weight_in_fp32)
