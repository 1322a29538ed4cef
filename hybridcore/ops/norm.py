"""RMSNorm in plain PyTorch, statistics in fp32: the twins of the Triton kernels.

`rms_norm_ref` is the pre-norm of every layer (twin of triton_decode.rms_norm); `gated_rms_norm_ref` the
grouped, gated norm of the Mamba-2 output (twin of triton_norm.py).

Rows of d channels split into n_groups contiguous groups; each group is normalised on its own:
    norm_before_gate=False (released Falcon-H1 models): rmsnorm(y * silu(z)) * w
    norm_before_gate=True:                              rmsnorm(y) * w * silu(z)

`gated_rms_norm_spanning_ref` is the same norm when one group is wider than the channels this rank holds
(tensor parallelism with fewer groups than ranks): the sum of squares of the local channels goes through
`all_sum`, which adds it over the ranks the group spans, and the mean is over the group's full width.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float, weight_in_fp32: bool) -> torch.Tensor:
    x_fp32 = x.float()
    x_fp32 = x_fp32 * torch.rsqrt(x_fp32.pow(2).mean(-1, keepdim=True) + eps)
    if weight_in_fp32:  # Nemotron-H (Megatron's fused norm): weight in fp32, then round once
        return (weight.float() * x_fp32).to(x.dtype)
    # Cast back before the weight, as Falcon-H1 (and Llama) do.
    return weight * x_fp32.to(x.dtype)


def gated_rms_norm_ref(y: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, n_groups: int, eps: float,
                       norm_before_gate: bool) -> torch.Tensor:
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


def gated_rms_norm_spanning_ref(y: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, group_width: int,
                                eps: float, norm_before_gate: bool,
                                all_sum: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """One norm group of `group_width` channels of which this rank holds y's last dimension."""
    dtype = y.dtype
    y = y.float()
    if not norm_before_gate:
        y = y * F.silu(gate.float())
    mean_square = all_sum(y.pow(2).sum(-1, keepdim=True)) / group_width
    y = y * torch.rsqrt(mean_square + eps) * weight.float()
    if norm_before_gate:
        y = y * F.silu(gate.float())
    return y.to(dtype)
