"""Packed documents as offsets for the variable-length attention kernel: the offsets the host computes
from the loader's document ids, the capacity that keeps one shape per batch shape, and (on CUDA) the
kernel's attention against the masked SDPA path on the same documents."""

from __future__ import annotations

import pytest
import torch

from hybridcore.model import varlen
from hybridcore.model.attention import attend_within_documents
from hybridcore.model.varlen import (TOKENS_PER_DOCUMENT_SLOT, cu_seqlens_for, document_capacity,
                                     varlen_attention_applies, varlen_causal_attention)


def test_offsets_start_every_row_and_every_change_of_document_then_pad_to_the_capacity(monkeypatch):
    monkeypatch.setattr(varlen, "TOKENS_PER_DOCUMENT_SLOT", 2)  # short rows, room for their documents
    seq_idx = torch.tensor([[0, 0, 0, 1, 1, 2], [5, 5, 5, 5, 5, 5], [0, 1, 1, 1, 0, 0]])
    cu = cu_seqlens_for(seq_idx)
    capacity = document_capacity(3, 6)
    assert capacity == 9
    assert cu.dtype == torch.int32 and cu.shape == (capacity + 1,)
    # row 0: 0, 3, 5; row 1: 6; row 2: 12, 13, 16 (a returning id is a new run); then 18 to the end
    assert cu.tolist() == [0, 3, 5, 6, 12, 13, 16] + [18] * (capacity + 1 - 7)


def test_offsets_are_none_when_the_documents_exceed_the_capacity():
    length = 2 * TOKENS_PER_DOCUMENT_SLOT
    capacity = document_capacity(1, length)
    fits = torch.arange(length).div(length // capacity, rounding_mode="floor")[None]  # exactly capacity runs
    assert cu_seqlens_for(fits) is not None
    assert cu_seqlens_for(torch.arange(length)[None]) is None  # one document per token


def test_the_kernel_applies_on_cuda_in_half_precision_only():
    q = torch.zeros(1, 2, 4, 8)
    cu = torch.zeros(3, dtype=torch.int32)
    assert not varlen_attention_applies(q, cu)
    assert not varlen_attention_applies(q.bfloat16(), cu)  # CPU
    assert not varlen_attention_applies(q, None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlashAttention's kernels need CUDA")
@pytest.mark.parametrize("gqa", [False, True])
def test_varlen_kernel_matches_the_masked_path_on_cuda(gqa):
    generator = torch.Generator(device="cuda").manual_seed(0)
    batch, heads, kv_heads, length, head_dim = 2, 4, 2 if gqa else 4, 160, 64
    seq_idx = torch.tensor([[0] * 70 + [1] * 50 + [2] * 40, [0] * 160])
    q = torch.randn(batch, heads, length, head_dim, device="cuda", dtype=torch.bfloat16, generator=generator)
    k, v = (torch.randn(batch, kv_heads, length, head_dim, device="cuda", dtype=torch.bfloat16,
                        generator=generator) for _ in range(2))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = varlen_causal_attention(q, k, v, cu_seqlens_for(seq_idx).cuda())
    ref = attend_within_documents(q, k, v, seq_idx.cuda(), flex=False)  # the boolean mask path
    grad = torch.randn_like(ref)
    got = torch.autograd.grad((out * grad).sum(), (q, k, v))
    expected = torch.autograd.grad((ref * grad).sum(), (q, k, v))
    assert float((out - ref).float().norm() / ref.float().norm()) < 1e-2
    for a, b in zip(got, expected):
        assert float((a - b).float().norm() / b.float().norm()) < 2e-2


@pytest.mark.parametrize("enabled", [False, True])
def test_the_step_brings_offsets_only_when_the_kernel_is_wanted(monkeypatch, enabled):
    from hybridcore.model import build_model
    from hybridcore.parallel import as_parallel_model
    from hybridcore.train.step import Batch, local_batch

    from .conftest import tiny_config

    monkeypatch.setattr(varlen, "ENABLED", enabled)
    model = as_parallel_model(build_model(tiny_config(layout="*-"), seed=0))
    tokens = torch.randint(0, 64, (2, 2 * TOKENS_PER_DOCUMENT_SLOT + 1))
    seq_idx = torch.zeros_like(tokens)
    seq_idx[:, 100:] = 1
    local = local_batch(model, Batch.from_tokens(tokens, seq_idx), torch.device("cpu"))
    if enabled:
        assert local.cu_seqlens.tolist()[:4] == [0, 100, 2 * TOKENS_PER_DOCUMENT_SLOT,
                                                 2 * TOKENS_PER_DOCUMENT_SLOT + 100]
    else:
        assert local.cu_seqlens is None
    assert local_batch(model, Batch.from_tokens(tokens), torch.device("cpu")).cu_seqlens is None
