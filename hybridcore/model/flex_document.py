"""Packed-document attention through FlexAttention, for compiled layers on CUDA.

SDPA has no fused kernel for "causal and inside the same document": a boolean mask moves it to a slower
kernel that also reads the [B, 1, L, L] mask (packed documents cost 20% of falcon-h1-0.5b's training
speed at 4 x 4096, benchmarks/README.md), and long rows go document by document with a host sync, which
breaks compiled graphs. FlexAttention builds a block mask from the document ids and runs one fused kernel
that skips the blocks between documents. It is fast only when torch.compile lowers it (eager it
materialises the scores), so attention.py takes it only inside a compiled layer on CUDA, and not under
activation checkpointing (attention.use_sdpa_for_documents).

Forwards without gradients (evaluation) keep the SDPA paths too: on the H200 (torch 2.11), a 0.5B
`hybridcore train --compile-mode reduce-overhead` run trained 12 steps through FlexAttention and then hit
an illegal memory access in its final evaluation, the first no-grad forward of the compiled layers
(CHANGELOG.md, 2026-11-29). The same evaluation on the SDPA paths had passed. The cause is not
found (upstream has open reports of illegal memory accesses from compiled FlexAttention and
create_block_mask, e.g. pytorch/pytorch#174923 and #166070, none known to be this one); until it is,
FlexAttention serves the training forward and backward only.

The block mask is built once per forward, outside the compiled layers (HybridLM.layer_inputs through the
context strategy), from the document runs directly (`document_block_mask`): a block of queries sees a block
of keys when their runs meet, and sees all of it when both lie inside one document. Built inside every
compiled layer with `create_block_mask`, it cost each layer 0.09 ms of GPU time a step, and compiling that
one op took 53 s against 3 s (benchmarks/attention_bench.py, variant flex_inside against flex_tuned, H100).
"""

from __future__ import annotations

import os

import torch

from .input_buffers import as_is

# HYBRIDCORE_FLEX_ATTENTION=0 keeps the SDPA paths everywhere (to compare, or to work around a failure).
ENABLED = os.environ.get("HYBRIDCORE_FLEX_ATTENTION", "1") != "0"

try:  # torch >= 2.5
    from torch.nn.attention.flex_attention import BlockMask, flex_attention
except ImportError:  # pragma: no cover - older torch keeps the SDPA paths
    BlockMask = flex_attention = None

# Tokens per side of a block mask's blocks: FlexAttention's default, a multiple of every kernel block size
# used here (SMALL_HEAD_OPTIONS and FlexAttention's own choices).
MASK_BLOCK = 128


# Block sizes for head_dim <= 64 on Hopper, chosen over FlexAttention's defaults on an H100 at falcon-h1-0.5b's
# attention (4 x 4096, 8 query / 2 key-value heads, documents of ~3,200 tokens), forward + backward kernel
# time: 0.88 ms against 1.09 (benchmarks/attention_bench.py, variant flex_tuned). Not for a document mask:
# ROWS_GUARANTEED_SAFE (a query's first key block can lie wholly in an earlier document: NaN) and
# BLOCKS_ARE_CONTIGUOUS (wrong outputs, a relative error of 0.16).
SMALL_HEAD_OPTIONS = {"fwd_BLOCK_M": 64, "fwd_BLOCK_N": 64, "fwd_num_warps": 4, "fwd_num_stages": 3,
                      "bwd_BLOCK_M1": 64, "bwd_BLOCK_N1": 64, "bwd_BLOCK_M2": 64, "bwd_BLOCK_N2": 64,
                      "bwd_num_warps": 4, "bwd_num_stages": 3}


def flex_kernel_options(head_dim: int, device: torch.device | str = "cuda") -> dict | None:
    """FlexAttention's kernel_options for this head size on this device (None: its own choice). Only
    Hopper (H100, H200), where they were measured: other GPUs have other shared-memory limits."""
    device = torch.device(device)
    hopper = device.type == "cuda" and _is_hopper(device.index if device.index is not None else -1)
    return dict(SMALL_HEAD_OPTIONS) if hopper and head_dim <= 64 else None


@torch.compiler.assume_constant_result  # read once while a compiled layer is traced, not traced into
def _is_hopper(index: int) -> bool:
    if not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_properties(index if index >= 0 else torch.cuda.current_device()).major == 9


def _flex_serves(tensor) -> bool:
    """FlexAttention on, and this forward one it serves: on CUDA, recording gradients (training; see the
    module's docstring for evaluation)."""
    return ENABLED and flex_attention is not None and tensor.is_cuda and torch.is_grad_enabled()


def document_mask_wanted(seq_idx: torch.Tensor | None) -> bool:
    """Whether a forward over these document ids should build a block mask for compiled layers (where
    flex_document_attention_applies may hold inside them)."""
    return seq_idx is not None and _flex_serves(seq_idx)


def flex_document_attention_applies(q: torch.Tensor) -> bool:
    """Inside torch.compile, where flex_attention becomes a fused kernel, in a forward FlexAttention serves."""
    return torch.compiler.is_compiling() and _flex_serves(q)


def document_runs(seq_idx: torch.Tensor) -> torch.Tensor:
    """[B, L] -> [B, L] int32 numbering of the runs of equal ids in each row from 0: a document is a run
    (as the Mamba state resets), so ids that recur later in a row start a new document."""
    changes = (seq_idx[:, 1:] != seq_idx[:, :-1]).to(torch.int32)
    return torch.cat([torch.zeros_like(changes[:, :1]), changes.cumsum(dim=1, dtype=torch.int32)], dim=1)


def document_block_mask(seq_idx: torch.Tensor, block_size: int = MASK_BLOCK, hold=as_is) -> BlockMask:
    """FlexAttention's block mask of "causal and inside the same document" for seq_idx [B, L], built from
    each block's first and last document (runs are numbered in order) in a few small tensor ops, without
    evaluating the mask per token pair; the same blocks `create_block_mask` finds. Its tensors, and the
    runs its mask_mod reads, pass through `hold` (model/input_buffers.py)."""
    batch, length = seq_idx.shape
    runs = hold("document_runs", document_runs(seq_idx))
    blocks = -(-length // block_size)
    padded = torch.cat([runs, runs[:, -1:].expand(batch, blocks * block_size - length)], dim=1)
    first, last = padded[:, ::block_size], padded[:, block_size - 1::block_size]  # [B, blocks]
    index = torch.arange(blocks, device=seq_idx.device)
    before = index[None, :] < index[:, None]  # [query block, key block]: keys wholly earlier
    # Keys up to the diagonal are visible where the key block's last document reaches the query block's first.
    visible = (before | torch.eye(blocks, dtype=torch.bool, device=seq_idx.device)) & (
        last[:, None, :] >= first[:, :, None])
    # Wholly visible: an earlier key block and the query block inside one and the same document (and both
    # whole blocks of real tokens: a padded tail stays partial, for the kernel to mask).
    whole = (first == last) & ((index + 1) * block_size <= length)
    full = before & whole[:, :, None] & whole[:, None, :] & (first[:, :, None] == first[:, None, :])
    partial = visible & ~full

    def causal_same_document(b, h, q_index, kv_index):
        return (kv_index <= q_index) & (runs[b, q_index] == runs[b, kv_index])

    mask = BlockMask.from_kv_blocks(*_ordered_blocks(partial), *_ordered_blocks(full), BLOCK_SIZE=block_size,
                                    mask_mod=causal_same_document, seq_lengths=(length, length))
    if hold is not as_is:
        for name, value in vars(mask).items():  # every tensor the kernels read (kv and q blocks, ...)
            if isinstance(value, torch.Tensor):
                setattr(mask, name, hold("block_mask." + name, value))
    return mask


def _ordered_blocks(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, query blocks, key blocks] booleans -> (count [B, 1, q], key block indices [B, 1, q, k], those set
    first in ascending order): the layout BlockMask keeps (one head dimension, shared by every head)."""
    counts = blocks.sum(dim=-1, dtype=torch.int32)
    indices = torch.argsort(blocks.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
    return counts[:, None], indices[:, None]


def flex_document_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask,
                            enable_gqa: bool) -> torch.Tensor:
    """Causal attention inside documents. q [B, heads, L, D], k/v [B, kv_heads, L, D], block_mask from
    `document_block_mask` -> [B, heads, L, D]."""
    return flex_attention(q, k, v, block_mask=block_mask, enable_gqa=enable_gqa,
                          kernel_options=flex_kernel_options(q.shape[-1], q.device))


__all__ = ["document_block_mask", "document_mask_wanted", "flex_document_attention",
           "flex_document_attention_applies", "flex_kernel_options"]
