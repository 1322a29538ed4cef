"""The twin of the decode attention kernel (triton_attention.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def decode_attention_ref(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
                         slot: torch.Tensor) -> torch.Tensor:
    """q [B, KV, G, D]: the G query heads of each key/value head, riding in SDPA's query-length dimension,
    so that no grouped-query support is needed; keys and values [B, KV, S, D]; mask [B, 1, 1, S] additive,
    -inf at every slot after `slot` (which the kernel skips; here the mask alone does it) -> [B, KV, G, D]."""
    del slot
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
