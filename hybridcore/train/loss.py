"""Next-token cross entropy, with the logits computed in chunks when they would be large.

A 261K vocabulary at 8K tokens makes fp32 logits of 8 GiB, plus their gradient. The chunked path
runs the model up to the final norm once, then for each slice of tokens computes logits and the loss
under activation checkpointing, so only one slice's logits exist at a time, in forward and backward.
One process (`fused_head=True`) takes hybridcore.ops.chunked_cross_entropy instead: the head's products
and the loss gradient in one pass per chunk, nothing recomputed, and an odd vocabulary padded for cuBLAS.
The parallel layouts keep the module path: one `model(...)` call (or the checkpointed chunks), which
is what their wrappers (FSDP's gathers, tensor-parallel heads) hook into.
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
    return max(1, AUTO_CHUNK_ELEMENTS // vocab_size)


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


def _plain_linear_head(model) -> bool:
    """A bias-free nn.Linear head whose weight is a whole local tensor (not a DTensor shard)."""
    from torch.distributed.tensor import DTensor

    head = getattr(model, "lm_head", None)
    return isinstance(head, torch.nn.Linear) and head.bias is None and not isinstance(head.weight, DTensor)


def loss_sum(model, input_ids: torch.Tensor, labels: torch.Tensor, seq_idx: torch.Tensor | None = None,
             chunk_tokens: int = 0, fused_head: bool = False) -> tuple[torch.Tensor, int]:
    """(sum of the per-token losses, number of counted tokens).

    fused_head: compute the head and the loss with ops.chunked_cross_entropy (one process only; a
    model whose head is not a plain local nn.Linear takes the module path)."""
    count = int((labels != IGNORE_INDEX).sum())
    if fused_head and _plain_linear_head(model):
        from ..ops import chunked_cross_entropy

        hidden = model.hidden_states(input_ids, seq_idx)
        chunk = resolve_chunk(labels.numel(), model.config.vocab_size, chunk_tokens)
        mean = chunked_cross_entropy(hidden, model.lm_head.weight, labels, model.config.lm_head_multiplier,
                                     chunk_size=chunk)
        return mean * count, count  # the mean is over the counted tokens (0 when there are none)
    losses = token_losses(model, input_ids, labels, seq_idx, chunk_tokens)
    return losses.sum(), count


@torch.no_grad()
def evaluate_loss(model, batches, device, autocast_dtype: torch.dtype | None = None,
                  chunk_tokens: int = 0, fused_head: bool = False) -> tuple[float, int]:
    """(mean loss per token, tokens) over `batches`, summed over every data-parallel rank."""
    from .distributed import all_reduce_sum

    was_training = model.training
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, token count
    try:
        for batch in batches:
            if batch["input_ids"].shape[0] == 0:  # a rank's share of the last partial batch can be empty
                continue
            seq_idx = batch["seq_idx"].to(device) if batch.get("seq_idx") is not None else None
            with autocast(device, autocast_dtype):
                total, count = loss_sum(model, batch["input_ids"].to(device), batch["labels"].to(device),
                                        seq_idx, chunk_tokens, fused_head)
            totals[0] += total.double()
            totals[1] += count
    finally:
        model.train(was_training)
    totals = all_reduce_sum(totals)
    count = int(totals[1].item())
    return (totals[0].item() / count if count else float("nan")), count


def autocast(device, dtype: torch.dtype | None):
    """bf16 autocast over fp32 weights when dtype is given, a no-op context otherwise."""
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)


__all__ = ["token_losses", "loss_sum", "evaluate_loss", "autocast", "resolve_chunk", "IGNORE_INDEX"]
