"""Per-token cross entropy through the logits, and the rule for how many tokens one loss chunk holds.

Training and evaluation take the fused head and loss (HybridLM.loss: hybridcore.ops.chunked_cross_entropy,
the head's products and the loss gradient in one pass per chunk, vocabulary-parallel under tensor
parallelism). `token_losses` is the plain module path over materialised logits, chunked under activation
checkpointing when they would be large (a 261K vocabulary at 8K tokens makes 8 GiB of fp32 logits): the
reference the fused path is tested against, and per-token losses where a caller wants them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
AUTO_CHUNK_ELEMENTS = 1 << 28  # logits above this many elements (1 GiB in fp32) are chunked


def _logits_of(output) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else output


def resolve_chunk(num_tokens: int, vocab_size: int, chunk_tokens: int = 0) -> int:
    """Tokens per logits chunk; `num_tokens` (one chunk) when chunking is not needed."""
    if chunk_tokens > 0:
        return min(chunk_tokens, num_tokens)
    if num_tokens * vocab_size <= AUTO_CHUNK_ELEMENTS:
        return num_tokens
    most = max(1, AUTO_CHUNK_ELEMENTS // vocab_size)
    # equal chunks where a divisor is near the largest: a shorter last chunk is another shape to compile
    for chunk in range(most, most // 2, -1):
        if num_tokens % chunk == 0:
            return chunk
    return most


def _chunk_losses(model, h_ND: torch.Tensor, labels_N: torch.Tensor) -> torch.Tensor:
    logits = model.logits(h_ND).float()
    return F.cross_entropy(logits, labels_N, ignore_index=IGNORE_INDEX, reduction="none")


def token_losses(model, input_ids: torch.Tensor, labels: torch.Tensor, seq_idx: torch.Tensor | None = None,
                 chunk_tokens: int = 0) -> torch.Tensor:
    """Per-token cross entropy [B, L] in fp32 (0 where labels == IGNORE_INDEX)."""
    batch, length = labels.shape
    chunk = resolve_chunk(batch * length, model.config.vocab_size, chunk_tokens)
    if chunk >= batch * length:
        logits = _logits_of(model(input_ids, seq_idx=seq_idx)).float()
        losses = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX,
                                 reduction="none")
        return losses.view(batch, length)
    h_ND = model.hidden_states(input_ids, seq_idx).flatten(0, 1)
    labels_N = labels.flatten()
    pieces = []
    for start in range(0, h_ND.shape[0], chunk):
        h_piece, labels_piece = h_ND[start:start + chunk], labels_N[start:start + chunk]
        if torch.is_grad_enabled():
            # recomputed in backward: only this slice's logits are ever alive
            pieces.append(checkpoint(_chunk_losses, model, h_piece, labels_piece, use_reentrant=False))
        else:
            pieces.append(_chunk_losses(model, h_piece, labels_piece))
    return torch.cat(pieces).view(batch, length)


__all__ = ["token_losses", "resolve_chunk", "IGNORE_INDEX", "AUTO_CHUNK_ELEMENTS"]
