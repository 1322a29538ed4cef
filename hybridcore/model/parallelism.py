"""The two points where a layer's computation may reach other ranks, as strategies the model is given.

    region   tensor parallelism: a layer's branches compute this rank's share of its heads and channels.
             `enter` hands the branches their input (the whole sequence), `exit` adds the branches'
             partial outputs over the ranks and returns the residual stream's share, `all_sum` adds a
             statistic over them (a norm group wider than one rank's channels), and the embedding and
             the LM head's loss work on a vocabulary split over the ranks.
    context  where the sequence lives: attention, the causal conv and the SSM scan over this rank's
             tokens, which with context parallelism are part of a longer sequence.

The classes here are the one-device strategies: every `region` method returns its input, and `context`
computes over the whole sequence. hybridcore.parallel provides the distributed ones and hands them to
`HybridLM.use_parallelism`; the model code is the same in every layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops import causal_conv1d, chunked_cross_entropy, ssd
from .attention import attend_within_documents
from .flex_document import document_block_mask, document_mask_wanted
from .input_buffers import as_is


class LocalRegion:
    """Tensor parallelism of degree 1."""

    size = 1

    def embedding(self, input_ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, weight)

    def enter(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def exit(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def all_sum(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def cross_entropy(self, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, multiplier: float,
                      chunk_size: int) -> torch.Tensor:
        return chunked_cross_entropy(hidden, weight, labels, multiplier, chunk_size)

    def gather_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        return logits


class WholeSequence:
    """Every token of the sequence on this rank."""

    size = 1

    def document_mask(self, seq_idx: torch.Tensor | None, hold=as_is):
        """FlexAttention's block mask of the documents, once per forward for every compiled layer (None
        where no layer could use it: no documents, not CUDA, no gradients; HybridLM asks only where some
        attention layer has Attention.flex_for_documents); its tensors through `hold` (model/input_buffers.py)."""
        return document_block_mask(seq_idx, hold=hold) if document_mask_wanted(seq_idx) else None

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_idx: torch.Tensor | None,
               document_mask=None) -> torch.Tensor:
        """q [B, heads, L, D], k/v [B, kv_heads, L, D] -> [B, heads, L, D], causal inside documents
        (through document_mask where FlexAttention applies)."""
        if seq_idx is not None:
            return attend_within_documents(q, k, v, seq_idx, document_mask)
        return F.scaled_dot_product_attention(q, k, v, is_causal=q.shape[2] > 1, enable_gqa=q.shape[1] != k.shape[1])

    def conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
             seq_idx: torch.Tensor | None) -> torch.Tensor:
        return causal_conv1d(x, weight, bias, seq_idx=seq_idx)[0]

    def scan(self, x, dt, A, B, C, seq_idx, **options) -> torch.Tensor:
        return ssd(x, dt, A, B, C, seq_idx=seq_idx, **options)[0]


LOCAL_REGION = LocalRegion()
WHOLE_SEQUENCE = WholeSequence()
