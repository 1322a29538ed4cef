"""Causal depthwise conv1d over the sequence, reset at document boundaries: the reference twin.

x [B, L, C] (channels last, as the in_proj produces it), weight [C, K], bias [C] or None,
initial_state [B, C, K-1] (the K-1 inputs before x, belonging to the first token's document),
seq_idx [B, L] or None. Returns y [B, L, C] (no activation) and, when asked, the final state: the
last K-1 inputs, with those of earlier documents zeroed so a decode step never sees them.
`causal_conv1d_step_ref` is one decoding token of it from that state (twin of triton_decode.conv_step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      seq_idx: torch.Tensor | None = None, initial_state: torch.Tensor | None = None,
                      return_final_state: bool = False):
    batch, length, channels = x.shape
    width = weight.shape[-1]
    history = (torch.zeros(batch, width - 1, channels, device=x.device, dtype=x.dtype)
               if initial_state is None else initial_state.transpose(1, 2).to(x.dtype))
    padded = torch.cat([history, x], dim=1)  # [B, K-1+L, C]
    if seq_idx is not None:
        padded_docs = torch.cat([seq_idx[:, :1].expand(batch, width - 1), seq_idx], dim=1)

    y = x.new_zeros(batch, length, channels, dtype=torch.promote_types(x.dtype, weight.dtype))
    for k in range(width):  # tap k reads the input (width - 1 - k) steps back
        window = padded[:, k:k + length]
        if seq_idx is not None:
            window = window * (padded_docs[:, k:k + length] == seq_idx)[..., None].to(x.dtype)
        y = y + window * weight[:, k]
    if bias is not None:
        y = y + bias
    y = y.to(x.dtype)
    if not return_final_state:
        return y, None
    final = padded[:, -(width - 1):] if width > 1 else padded[:, :0]
    if seq_idx is not None and width > 1:
        final = final * (padded_docs[:, -(width - 1):] == seq_idx[:, -1:])[..., None].to(x.dtype)
    return y, final.transpose(1, 2).contiguous()


def causal_conv1d_step_ref(x: torch.Tensor, state: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                           silu: bool) -> torch.Tensor:
    """One token x [B, C] from state [B, C, K-1] (updated in place: the window moves by one) with weight
    [C, K] -> y [B, C], through SiLU if `silu`. The conv over one window is a grouped conv1d with one output."""
    window = torch.cat([state, x.unsqueeze(-1)], dim=-1)  # [B, C, K]
    state.copy_(window[:, :, 1:])
    y = F.conv1d(window, weight.unsqueeze(1), bias, groups=window.shape[1]).squeeze(-1)
    return F.silu(y) if silu else y
