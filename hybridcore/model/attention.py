"""Grouped-query attention with RoPE on scaled_dot_product_attention.

Causal, and when `seq_idx` is given (packed documents) a token attends only to its own document:
inside a compiled layer on CUDA through FlexAttention's block mask (flex_document.py), else through a
boolean [B, 1, Lq, Lk] mask while that is small, else (long sequences, where the mask and the bias kept
for backward would grow as L^2) one call per document run without a mask. Training calls attend through
the layer's context strategy (model.parallelism; context parallelism supplies another); generation's
cache paths are here.
Falcon-H1 multiplies keys by `key_multiplier`; the input/output multipliers live in layers.py. A softmax
scale other than head_dim ** -0.5 (ModelConfig.attention_scale) is applied to the queries, so that every
attention path (documents, caches, context parallelism) honours it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from ..ops import decode_attention, plain_tensors, rope_cache_write
from .cache import AttentionCache, KeepsInferenceValues
from .flex_document import flex_document_attention, flex_document_attention_applies
from .plan import COLWISE, ROWWISE, linear_plan
from .rope import apply_rope

if TYPE_CHECKING:
    from .layers import LayerInputs


# Above this many B x Lq x Lk elements, packed documents attend run by run instead of through a mask.
# The environment variable lets tests force either path.
DOCUMENT_MASK_LIMIT = int(os.environ.get("HYBRIDCORE_DOCUMENT_MASK_LIMIT", 1 << 27))


def document_mask_is_large(batch: int, query_length: int, key_length: int) -> bool:
    return batch * query_length * key_length > DOCUMENT_MASK_LIMIT


def document_causal_mask(query_docs: torch.Tensor, key_docs: torch.Tensor, query_slots: torch.Tensor,
                         key_slots: torch.Tensor) -> torch.Tensor:
    """Boolean [B, 1, Lq, Lk]: key slot <= query slot and the same document."""
    causal = key_slots[None, :] <= query_slots[:, None]  # [Lq, Lk]
    same_doc = query_docs[:, :, None] == key_docs[:, None, :]  # [B, Lq, Lk]
    return (causal[None] & same_doc)[:, None]


class Attention(KeepsInferenceValues):
    parallel_plan = {**linear_plan("q_proj", COLWISE), **linear_plan("k_proj", COLWISE),
                     **linear_plan("v_proj", COLWISE), **linear_plan("o_proj", ROWWISE)}

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.head_dim = config.head_dim
        self.key_multiplier = config.key_multiplier
        default_scale = config.head_dim ** -0.5
        scale = config.attention_scale
        # the factor that turns SDPA's default head_dim ** -0.5 into the configured scale
        self.query_multiplier = None if scale is None or scale == default_scale else scale / default_scale
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.d_model, config.num_heads * config.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.d_model, config.num_kv_heads * config.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.d_model, config.num_kv_heads * config.head_dim, bias=bias)
        self.o_proj = nn.Linear(config.num_heads * config.head_dim, config.d_model, bias=bias)
        # FlexAttention for packed documents in compiled layers on CUDA; activation checkpointing turns it off
        # (FlexAttention inside a checkpointed, compiled layer has open reports upstream, pytorch/pytorch#167116),
        # and so does parallelize without compile. Where no layer has it, no forward builds the block mask.
        self.flex_for_documents = True

    def forward(self, x: torch.Tensor, inputs: LayerInputs, cache: AttentionCache | None = None) -> torch.Tensor:
        """x [B, L, d] -> [B, L, d]. The head counts are those of the projections this module holds."""
        if cache is not None:
            if cache.decode is not None:
                return self.decode_token(x, inputs, cache)
            return self.prefill_tokens(x, inputs, cache)
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, -1, self.head_dim)
        k = self.k_proj(x).view(batch, length, -1, self.head_dim) * self.key_multiplier
        v = self.v_proj(x).view(batch, length, -1, self.head_dim)
        q, k = apply_rope(q, inputs.cos, inputs.sin), apply_rope(k, inputs.cos, inputs.sin)
        if self.query_multiplier is not None:
            q = q * self.query_multiplier
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, heads, L, head_dim]
        out = inputs.context.attend(q, k, v, inputs.seq_idx, inputs.document_mask if self.flex_for_documents else None)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The cache paths' q, k, v [B, L, heads * head_dim]: without gradients, one product with the three
        weights joined (views of its output; a decoded token costs one GEMM launch instead of three), else
        one product each (also in a compiled layer, which fuses what it can itself)."""
        joined = None if torch.is_grad_enabled() or torch.compiler.is_compiling() else self._joined_projection(x)
        if joined is None:
            return self.q_proj(x), self.k_proj(x), self.v_proj(x)
        weight, bias, widths = joined
        return torch.split(F.linear(x, weight, bias), widths, dim=-1)

    def _joined_projection(self, like: torch.Tensor):
        """(weight, bias, widths) of q, k and v joined (kept between calls: it costs the memory of the three
        weights again); None for tensor subclasses (DTensor shards), which keep their own products."""
        projections = (self.q_proj, self.k_proj, self.v_proj)
        tensors = [t for p in projections for t in (p.weight, p.bias) if t is not None]
        if not plain_tensors(like, *tensors):
            return None

        def join():
            bias = torch.cat([p.bias for p in projections]) if self.q_proj.bias is not None else None
            return torch.cat([p.weight for p in projections]), bias, [p.weight.shape[0] for p in projections]
        return self.kept("joined_projection", tensors, join)

    def prefill_tokens(self, x: torch.Tensor, inputs: LayerInputs, cache: AttentionCache) -> torch.Tensor:
        """forward with a cache (prefill, or eager decoding without the decode step): one op rotates queries
        and keys and writes keys and values at the next slots; attend over every filled slot of the query's
        documents."""
        batch, length, _ = x.shape
        slots = cache.next_slots(length, inputs.memo)
        q = rope_cache_write(*self.project(x), *inputs.rope_tables(),
                             self.key_multiplier, self.query_multiplier, cache.keys, cache.values, slots)
        out = attend_with_cache(q.transpose(1, 2), inputs.seq_idx, cache, inputs.memo)  # [B, heads, L, head_dim]
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))

    def decode_token(self, x: torch.Tensor, inputs: LayerInputs, cache: AttentionCache) -> torch.Tensor:
        """forward for one token per row [B, 1, d_model] against every slot of a static-shape cache, under
        the decode step's shared mask, in few tensor ops (decoding is bound by op launches): one op rotates
        queries and keys and writes keys and values at the decode slot, and the query heads of each
        key/value head ride in the query-length dimension (ops.decode_attention: split over the cache's
        keys inside a captured CUDA graph, where SDPA's one program per row and key/value head is slow;
        SDPA in eager decoding, where its one launch costs less host time)."""
        batch, length, _ = x.shape
        assert length == 1, "static-shape decoding feeds one token per row"
        q = rope_cache_write(*self.project(x), *inputs.rope_tables(),
                             self.key_multiplier, self.query_multiplier, cache.keys, cache.values, cache.decode.slot)
        heads, kv_heads = q.shape[2], cache.keys.shape[1]
        grouped = q.view(batch, kv_heads, heads // kv_heads, self.head_dim)
        out = decode_attention(grouped, cache.keys, cache.values, cache.decode.mask, cache.decode.slot)
        return self.o_proj(out.view(batch, 1, heads * self.head_dim))


def attend_within_documents(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_idx: torch.Tensor,
                            document_mask=None) -> torch.Tensor:
    """Causal attention inside the documents of seq_idx [B, L], the whole sequence on this rank; through
    FlexAttention with document_mask (flex_document.document_block_mask of seq_idx) where it applies."""
    batch, _, length, _ = q.shape
    gqa = q.shape[1] != k.shape[1]
    if document_mask is not None and flex_document_attention_applies(q):
        return flex_document_attention(q, k, v, document_mask, gqa)
    if document_mask_is_large(batch, length, length):
        return attend_by_document(q, k, v, seq_idx, seq_idx, 0, gqa)
    slots = torch.arange(length, device=q.device)
    mask = document_causal_mask(seq_idx, seq_idx, slots, slots)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


def attend_with_cache(q: torch.Tensor, seq_idx: torch.Tensor | None, cache: AttentionCache,
                      memo: dict | None = None) -> torch.Tensor:
    """Generation (prefill, or eager decoding): the new tokens' keys and values are in the cache at its next
    slots; record their documents and attend over every filled slot of the query's documents. Every layer of
    one forward appends at the same slots with the same documents, so the mask is built once and kept in
    `memo` (LayerInputs.memo) for the others."""
    batch, _, length, _ = q.shape
    memo = {} if memo is None else memo
    start = cache.filled
    docs = seq_idx
    if docs is None:
        docs = memo.get(("cache_docs", start, length))
        if docs is None:
            docs = memo[("cache_docs", start, length)] = cache_docs_for_new_tokens(cache, batch, length, q.device)
    k, v, key_docs = cache.commit(docs)
    key = ("cache_mask", start, length)
    mask = memo.get(key)
    if mask is None and (start > 0 or seq_idx is not None):  # else: a prompt into an empty cache, plainly causal
        slots = torch.arange(start + length, device=q.device)
        mask = memo[key] = document_causal_mask(docs, key_docs, slots[start:], slots)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and length > 1,
                                          enable_gqa=q.shape[1] != k.shape[1])


def use_sdpa_for_documents(model: nn.Module) -> None:
    """Keep packed documents on the SDPA paths in every attention layer of `model` (activation
    checkpointing calls this; see Attention.flex_for_documents)."""
    for module in model.modules():
        if isinstance(module, Attention):
            module.flex_for_documents = False


def cache_docs_for_new_tokens(cache: AttentionCache, batch: int, length: int, device) -> torch.Tensor:
    """New tokens without seq_idx continue the document of the last cached token (or document 0)."""
    if cache.filled == 0:
        return torch.zeros(batch, length, dtype=torch.long, device=device)
    return cache.key_docs[:, cache.filled - 1: cache.filled].expand(batch, length)


def attend_by_document(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, query_docs: torch.Tensor,
                       key_docs: torch.Tensor, query_start: int, enable_gqa: bool) -> torch.Tensor:
    """Causal attention inside documents, without a mask tensor.

    q [B, heads, Lq, head_dim] holds the tokens at key slots query_start .. query_start + Lq - 1 of
    k, v [B, kv_heads, Lk, head_dim]; query_docs [B, Lq] and key_docs [B, Lk] are their document ids, a
    document being a run of equal ids (where the Mamba state resets too). One attention call per row and
    run of queries, over the keys from the document's first token to the run's last query, causal
    aligned to the lower right (fused kernels apply that without a mask). Costs one host sync."""
    batch, _, length, _ = q.shape
    rows, starts = run_starts(query_docs).nonzero(as_tuple=True)  # row-major: each row's runs in order
    document_starts = document_start_slots(key_docs)[rows, starts + query_start]
    runs = torch.stack([rows, starts, document_starts], dim=1).tolist()
    per_row = [[] for _ in range(batch)]
    for index, (row, first, key_first) in enumerate(runs):
        last = runs[index + 1][1] if index + 1 < len(runs) and runs[index + 1][0] == row else length
        key_end = query_start + last
        queries = q[row:row + 1, :, first:last]
        keys, values = k[row:row + 1, :, key_first:key_end], v[row:row + 1, :, key_first:key_end]
        per_row[row].append(lower_right_causal_attention(queries, keys, values, enable_gqa))
    return torch.cat([torch.cat(pieces, dim=2) for pieces in per_row], dim=0)


def lower_right_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, enable_gqa: bool) -> torch.Tensor:
    """Causal attention where the last query is the last key (Lq <= Lk), without a mask tensor on
    CUDA's fused kernels."""
    if q.shape[2] == k.shape[2]:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=enable_gqa)
    from torch.nn.attention.bias import causal_lower_right  # imports torch._dynamo: only when needed

    if enable_gqa:  # not every torch version passes enable_gqa through CausalBias: repeat the kv heads
        k, v = (t.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for t in (k, v))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(q.shape[2], k.shape[2]))


def run_starts(docs: torch.Tensor) -> torch.Tensor:
    """Boolean [B, L]: True where a run of equal document ids begins."""
    starts = torch.ones_like(docs, dtype=torch.bool)
    starts[:, 1:] = docs[:, 1:] != docs[:, :-1]
    return starts


def document_start_slots(docs: torch.Tensor) -> torch.Tensor:
    """[B, L]: the slot where each token's document (run of equal ids) begins."""
    slots = torch.arange(docs.shape[1], device=docs.device).expand_as(docs)
    return torch.cummax(torch.where(run_starts(docs), slots, torch.zeros_like(slots)), dim=1).values
