"""Per-layer inference state: attention keys/values and the Mamba-2 conv window + SSM state.

The model's modules read and update these in place when one is passed; generation (generate.py)
allocates them. Every key slot remembers its document id so that left padding (a separate document
before the prompt) is never attended to, the same mechanism as packed-document masking in training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionCache:
    keys: torch.Tensor  # [B, kv_heads, max_len, head_dim]
    values: torch.Tensor  # [B, kv_heads, max_len, head_dim]
    key_docs: torch.Tensor  # [B, max_len] document id of each filled slot
    filled: int = 0  # slots written so far (the same for every row)
    # Static shapes for decoding (CUDA-graph capture), set by `fix_shapes()`: the next slot is a device
    # tensor, appends write there, and attention reads every slot. Empty slots hold document -1, which
    # no token belongs to, so they are never attended.
    next_slot: torch.Tensor | None = None

    @classmethod
    def allocate(cls, batch: int, kv_heads: int, max_len: int, head_dim: int, device, dtype) -> "AttentionCache":
        return cls(keys=torch.zeros(batch, kv_heads, max_len, head_dim, device=device, dtype=dtype),
                   values=torch.zeros(batch, kv_heads, max_len, head_dim, device=device, dtype=dtype),
                   key_docs=torch.full((batch, max_len), -1, device=device, dtype=torch.long))

    def append(self, keys: torch.Tensor, values: torch.Tensor, docs: torch.Tensor):
        """Write [B, kv_heads, L, head_dim] at the next slots; return all filled keys, values and docs."""
        start, end = self.filled, self.filled + keys.shape[2]
        if end > self.keys.shape[2]:
            raise ValueError(f"attention cache holds {self.keys.shape[2]} tokens; {end} requested")
        self.keys[:, :, start:end] = keys
        self.values[:, :, start:end] = values
        self.key_docs[:, start:end] = docs
        self.filled = end
        return self.keys[:, :, :end], self.values[:, :, :end], self.key_docs[:, :end]

    def fix_shapes(self) -> None:
        """From now on append at a device-side slot counter (see `append_static`)."""
        self.next_slot = torch.tensor(self.filled, device=self.keys.device)

    def append_static(self, keys: torch.Tensor, values: torch.Tensor, docs: torch.Tensor):
        """Write at `next_slot` without a Python-side shape change; return the whole buffers and the
        slots written. The caller keeps within max_len (index_copy_ rejects a slot past it)."""
        slots = self.next_slot + torch.arange(keys.shape[2], device=keys.device)
        self.keys.index_copy_(2, slots, keys)
        self.values.index_copy_(2, slots, values)
        self.key_docs.index_copy_(1, slots, docs)
        self.next_slot.add_(keys.shape[2])
        return self.keys, self.values, self.key_docs, slots


@dataclass
class MambaCache:
    conv_state: torch.Tensor  # [B, conv_dim, d_conv - 1]: the last conv inputs
    ssm_state: torch.Tensor  # [B, H, P, N] fp32

    @classmethod
    def allocate(cls, batch: int, conv_dim: int, d_conv: int, heads: int, head_dim: int, d_state: int,
                 device, dtype) -> "MambaCache":
        return cls(conv_state=torch.zeros(batch, conv_dim, d_conv - 1, device=device, dtype=dtype),
                   ssm_state=torch.zeros(batch, heads, head_dim, d_state, device=device, dtype=torch.float32))


@dataclass
class LayerCache:
    attention: AttentionCache | None = None
    mamba: MambaCache | None = None
