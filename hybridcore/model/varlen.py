"""Packed-document attention through FlashAttention-2's variable-length kernels, on CUDA in half precision.
Opt-in (HYBRIDCORE_VARLEN_ATTENTION=1) until it has been checked and timed on a GPU: its GPU test
(tests/model/test_varlen.py) and `benchmarks/attention_bench.py --variants varlen ...` are ready for that.

The rows of a batch are laid end to end as one sequence of B x L tokens and every document is its own
causal sequence, given by `cu_seqlens` (int32 [capacity + 1]): the offset of each document's first token,
then B x L, repeated to the end. The kernel attends within each document exactly. Why: on an H100,
falcon-h1-0.5b's attention at 4 x 4096 took 0.77 ms forward and backward through SDPA's causal kernel
(no document masking) and 1.23 ms through FlexAttention's document mask (documents of about 3,200
tokens; benchmarks/results/attention-4x4096-8h2kv64-doc3200.json), about 7% of the training step.

The capacity is fixed by the batch's shape (`document_capacity`), so compiled graphs and CUDA graphs
see one shape every step: documents beyond it would not fit, and such a batch goes without `cu_seqlens`
to the other document paths (FlexAttention, masks). Padding sequences are empty. The offsets are
computed on the host from the loader's document ids (`cu_seqlens_for`), where the count is known
without waiting for the device.
"""

from __future__ import annotations

import math
import os

import torch

# HYBRIDCORE_VARLEN_ATTENTION=1 sends packed documents through the kernel (see the module's docstring).
ENABLED = os.environ.get("HYBRIDCORE_VARLEN_ATTENTION", "0") == "1"

# One sequence slot for every this many tokens of a row (and at least one per row): rows whose documents
# average fewer tokens than this take the other document paths.
TOKENS_PER_DOCUMENT_SLOT = 256


def document_capacity(rows: int, length: int) -> int:
    return rows * max(1, math.ceil(length / TOKENS_PER_DOCUMENT_SLOT))


def cu_seqlens_for(seq_idx: torch.Tensor) -> torch.Tensor | None:
    """Document offsets over the flattened rows of seq_idx [B, L] (a document is a run of equal ids, and
    every row starts one), padded to `document_capacity`; None when the documents exceed it. Reads
    seq_idx on the host (a copy, and so a wait, if it lives on a device)."""
    from .attention import run_starts  # attention.py imports this module

    ids = seq_idx.detach().cpu()
    rows, length = ids.shape
    offsets = run_starts(ids).flatten().nonzero().flatten()
    capacity = document_capacity(rows, length)
    if offsets.numel() > capacity:
        return None
    padded = torch.full((capacity + 1,), rows * length, dtype=torch.int32)
    padded[:offsets.numel()] = offsets
    return padded


def varlen_attention_applies(q: torch.Tensor, cu_seqlens: torch.Tensor | None) -> bool:
    return (ENABLED and cu_seqlens is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
            and q.shape[-1] <= 256 and q.shape[-1] % 8 == 0)


def varlen_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            cu_seqlens: torch.Tensor) -> torch.Tensor:
    """q [B, heads, L, D], k/v [B, kv_heads, L, D] -> [B, heads, L, D], causal inside the documents of
    cu_seqlens (grouped-query heads natively). Differentiable (aten's FlashAttention backward)."""
    batch, heads, length, head_dim = q.shape

    def tokens_first(t):  # [B, h, L, D] -> [B * L, h, D]; a view where t came from [B, L, h, D]
        return t.transpose(1, 2).reshape(batch * length, t.shape[1], head_dim)

    out = torch.ops.aten._flash_attention_forward(
        tokens_first(q), tokens_first(k), tokens_first(v), cu_seqlens, cu_seqlens, length, length, 0.0, True,
        False)[0]
    return out.view(batch, length, heads, head_dim).transpose(1, 2)


__all__ = ["cu_seqlens_for", "document_capacity", "varlen_attention_applies", "varlen_causal_attention",
           "TOKENS_PER_DOCUMENT_SLOT"]
