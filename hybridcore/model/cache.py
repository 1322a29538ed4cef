"""Per-layer inference state: attention keys/values and the Mamba-2 conv window + SSM state.

The model's modules read and update these in place when one is passed; generation (generate.py)
allocates them. Every key slot remembers its document id so that left padding (a separate document
before the prompt) is never attended to, the same mechanism as packed-document masking in training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class AttentionCache:
    keys: torch.Tensor  # [B, kv_heads, max_len, head_dim]
    values: torch.Tensor  # [B, kv_heads, max_len, head_dim]
    key_docs: torch.Tensor  # [B, max_len] document id of each filled slot
    filled: int = 0  # slots written so far (the same for every row)
    # While decoding with static shapes (CUDA-graph capture) the decode step sets this: tokens then
    # write at a device-side slot and attention reads every slot through the shared mask (key_docs then
    # keeps describing the slots filled before decoding).
    decode: DecodeSlots | None = None

    @classmethod
    def allocate(cls, batch: int, kv_heads: int, max_len: int, head_dim: int, device, dtype) -> "AttentionCache":
        return cls(keys=torch.zeros(batch, kv_heads, max_len, head_dim, device=device, dtype=dtype),
                   values=torch.zeros(batch, kv_heads, max_len, head_dim, device=device, dtype=dtype),
                   key_docs=torch.full((batch, max_len), -1, device=device, dtype=torch.long))

    def next_slots(self, length: int, memo: dict) -> torch.Tensor:
        """The slots [length] (long, on the cache's device) that the next `length` tokens' keys and values go
        to; every layer of one forward shares the tensor through `memo`. Raises when they do not fit."""
        start, end = self.filled, self.filled + length
        if end > self.keys.shape[2]:
            raise ValueError(f"attention cache holds {self.keys.shape[2]} tokens; {end} requested")
        key = ("cache_slots", start, length)
        if key not in memo:
            memo[key] = torch.arange(start, end, device=self.keys.device)
        return memo[key]

    def commit(self, docs: torch.Tensor):
        """After the keys and values of the next docs.shape[1] tokens are written at `next_slots`: record
        their documents [B, L]; return every filled slot's keys, values and documents."""
        start, end = self.filled, self.filled + docs.shape[1]
        self.key_docs[:, start:end] = docs
        self.filled = end
        return self.keys[:, :, :end], self.values[:, :, :end], self.key_docs[:, :end]


@dataclass
class DecodeSlots:
    """The decoding position shared by every attention layer: the slot the next token writes and the
    additive mask over all slots (0 where the decoded document's keys are, -inf elsewhere: padding and
    empty slots). The decode step advances both once per token, so no layer builds a mask of its own."""
    slot: torch.Tensor  # [1] long
    mask: torch.Tensor  # [B, 1, 1, max_len] in the cache's dtype

    @classmethod
    def after_prefill(cls, cache: AttentionCache, document: int) -> "DecodeSlots":
        """From a prefilled cache whose rows continue `document` (every layer's key_docs are the same)."""
        keep = cache.key_docs == document
        batch, slots = keep.shape
        # Rows of the mask start at multiples of 8 elements: CUDA's fused attention copies the mask into
        # such a layout on every call otherwise.
        padded = torch.full((batch, 1, 1, -(-slots // 8) * 8), float("-inf"), device=keep.device,
                            dtype=cache.keys.dtype)
        mask = padded[..., :slots]
        mask.masked_fill_(keep[:, None, None, :], 0.0)
        return cls(slot=torch.tensor([cache.filled], device=keep.device), mask=mask)

    def open_slot(self) -> None:
        """Before a step: the token written at `slot` attends to itself and to the keys before it."""
        self.mask.index_fill_(-1, self.slot, 0.0)

    def advance(self) -> None:
        self.slot.add_(1)


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


class KeepsInferenceValues(nn.Module):
    """A module that keeps values derived from its parameters between prefill and decoding calls (joined
    weights, constants): rebuilt when a parameter is replaced or changed in place, dropped when the module
    moves or changes dtype (`.to`, `.cpu`, `.half`), so no memory stays behind on the old device. Plain
    attributes: not state, never saved."""

    def kept(self, name: str, parameters, build: Callable):
        key = (torch.is_inference_mode_enabled(), *((p.data_ptr(), p._version) for p in parameters if p is not None))
        store = self.__dict__.setdefault("_inference_values", {})
        if name not in store or store[name][0] != key:
            store[name] = (key, build())
        return store[name][1]

    def _apply(self, fn, recurse=True):
        self.__dict__.pop("_inference_values", None)
        return super()._apply(fn, recurse)
