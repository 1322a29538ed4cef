"""Compute ops of the Mamba-2 path. Each name dispatches to a fused kernel where one is registered
for the device, else to the pure-PyTorch reference twin with the same signature."""

from __future__ import annotations

from .conv import causal_conv1d_ref
from .ssd import ssd_chunked, ssd_recurrent


def ssd(x, dt, A, B, C, chunk_size, D=None, dt_bias=None, dt_softplus=False, dt_limit=(0.0, float("inf")),
        initial_state=None, seq_idx=None, return_final_state=False):
    """Chunked SSD scan; returns (y, final_state or None)."""
    out = ssd_chunked(x, dt, A, B, C, chunk_size, D=D, dt_bias=dt_bias, dt_softplus=dt_softplus,
                      dt_limit=dt_limit, initial_state=initial_state, seq_idx=seq_idx,
                      return_final_state=return_final_state)
    return out if return_final_state else (out, None)


def causal_conv1d(x, weight, bias=None, seq_idx=None, initial_state=None, return_final_state=False):
    """Causal depthwise conv1d with document resets; returns (y, final_state or None)."""
    return causal_conv1d_ref(x, weight, bias, seq_idx=seq_idx, initial_state=initial_state,
                             return_final_state=return_final_state)


__all__ = ["ssd", "causal_conv1d", "ssd_chunked", "ssd_recurrent", "causal_conv1d_ref"]
