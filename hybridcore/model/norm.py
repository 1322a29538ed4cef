"""RMSNorm and the grouped, gated RMSNorm of the Mamba-2 output. Statistics are computed in fp32."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_fp32 = x.float()
        x_fp32 = x_fp32 * torch.rsqrt(x_fp32.pow(2).mean(-1, keepdim=True) + self.eps)
        # Cast back before the weight, as Falcon-H1 (and Llama) do.
        return self.weight * x_fp32.to(x.dtype)


def gated_rms_norm(y: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, n_groups: int, eps: float,
                   norm_before_gate: bool) -> torch.Tensor:
    """Falcon-H1's gated RMSNorm over `n_groups` contiguous groups of the last dimension.

    norm_before_gate=False (released models): rmsnorm(y * silu(z)) * w; True: rmsnorm(y) * w * silu(z).
    """
    dtype = y.dtype
    y = y.float()
    if not norm_before_gate:
        y = y * F.silu(gate.float())
    grouped = y.unflatten(-1, (n_groups, -1))
    grouped = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + eps)
    y = grouped.flatten(-2) * weight.float()
    if norm_before_gate:
        y = y * F.silu(gate.float())
    return y.to(dtype)


class GatedRMSNorm(nn.Module):
    def __init__(self, dim: int, n_groups: int, eps: float, norm_before_gate: bool):
        super().__init__()
        self.n_groups = n_groups
        self.eps = eps
        self.norm_before_gate = norm_before_gate
        self.weight = nn.Parameter(torch.empty(dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return gated_rms_norm(y, gate, self.weight, self.n_groups, self.eps, self.norm_before_gate)
