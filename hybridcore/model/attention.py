"""Grouped-query attention with RoPE on scaled_dot_product_attention.

Causal, and when `seq_idx` is given (packed documents) a token attends only to its own document.
Falcon-H1 multiplies keys by `key_multiplier`; the input/output multipliers live in layers.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .cache import AttentionCache
from .rope import apply_rope


def document_causal_mask(query_docs: torch.Tensor, key_docs: torch.Tensor, query_slots: torch.Tensor,
                         key_slots: torch.Tensor) -> torch.Tensor:
    """Boolean [B, 1, Lq, Lk]: key slot <= query slot and the same document."""
    causal = key_slots[None, :] <= query_slots[:, None]  # [Lq, Lk]
    same_doc = query_docs[:, :, None] == key_docs[:, None, :]  # [B, Lq, Lk]
    return (causal[None] & same_doc)[:, None]


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.key_multiplier = config.key_multiplier
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.d_model, config.num_heads * config.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.d_model, config.num_kv_heads * config.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.d_model, config.num_kv_heads * config.head_dim, bias=bias)
        self.o_proj = nn.Linear(config.num_heads * config.head_dim, config.d_model, bias=bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, seq_idx: torch.Tensor | None = None,
                cache: AttentionCache | None = None) -> torch.Tensor:
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, -1, self.head_dim)
        k = self.k_proj(x).view(batch, length, -1, self.head_dim) * self.key_multiplier
        v = self.v_proj(x).view(batch, length, -1, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, heads, L, head_dim]
        out = self.attend(q, k, v, seq_idx, cache)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_idx: torch.Tensor | None,
               cache: AttentionCache | None) -> torch.Tensor:
        """q [B, heads, L, head_dim], k/v [B, kv_heads, L, head_dim] -> [B, heads, L, head_dim].
        A method so that context parallelism (hybridcore.parallel) can attend across ranks."""
        batch, _, length, _ = q.shape
        mask = None
        if cache is not None and cache.next_slot is not None:  # static shapes: attend over every slot
            docs = seq_idx if seq_idx is not None else cache_docs_for_new_tokens(cache, batch, length, q.device)
            k, v, key_docs, new_slots = cache.append_static(k, v, docs)
            mask = document_causal_mask(docs, key_docs, new_slots, torch.arange(key_docs.shape[1], device=q.device))
        elif cache is not None:
            start = cache.filled
            docs = seq_idx if seq_idx is not None else cache_docs_for_new_tokens(cache, batch, length, q.device)
            k, v, key_docs = cache.append(k, v, docs)
            if start > 0 or seq_idx is not None:  # else: a prompt into an empty cache, plainly causal
                slots = torch.arange(start + length, device=q.device)
                mask = document_causal_mask(docs, key_docs, slots[start:], slots)
        elif seq_idx is not None:
            slots = torch.arange(length, device=q.device)
            mask = document_causal_mask(seq_idx, seq_idx, slots, slots)

        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and length > 1,
                                              enable_gqa=self.num_kv_heads != self.num_heads)


def cache_docs_for_new_tokens(cache: AttentionCache, batch: int, length: int, device) -> torch.Tensor:
    """New tokens without seq_idx continue the document of the last cached token (or document 0)."""
    if cache.filled == 0:
        return torch.zeros(batch, length, dtype=torch.long, device=device)
    return cache.key_docs[:, cache.filled - 1: cache.filled].expand(batch, length)
