"""Prefill is bound by host time too (a 4096-token prompt's GPU work is a fraction of its wall time on an
H200): count the tensor ops it costs per `P-` block, the difference between a two-block and a one-block
model, on the reference ops and with the fused kernels (chunk 16, so that the fused scan applies), for a
plain batch and a left-padded one, and check that neither prefill nor a decode step synchronises with
the device (on CUDA each `.item()`, `bool(tensor)` or data-dependent shape stalls the host).

Counted as in test_decode_launches.py, after a first prefill (which builds the constants that later
prefills and decoding reuse). Before the cache paths kept their constants and shared the rope tables and
the mask across layers: 205 / 268 ops per block (reference; plain / left-padded) and 113 / 132 (kernels);
then 177 / 230 and 85 / 94; with the inference kernels (the pre-norm, SwiGLU, rope with the cache
write; the conv state from the prompt alone), 172 / 225 and 49 / 58; with q, k and v as one product,
171 / 224 and 48 / 57. The bounds keep a small margin for harmless changes.
"""

from __future__ import annotations

import pytest
import torch

from hybridcore import ops
from hybridcore.generation import DecodeStep, prefill, prompt_layout

from ..kernel_marks import kernels_on_cpu
from .helpers import random_model, tiny_config
from .test_decode_launches import CountOps

MAX_OPS_PER_BLOCK = {("off", False): 175, ("off", True): 228, ("on", False): 50, ("on", True): 59}
# what .item(), bool(), int() and data-dependent shapes reach the dispatcher as
SYNC_OPS = ("aten._local_scalar_dense", "aten.is_nonzero", "aten.item", "aten.nonzero", "aten.masked_select")


@pytest.fixture
def count_tolist(monkeypatch):
    """Tensor.tolist copies to the host without passing the dispatcher: count its calls."""
    calls = []
    tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: calls.append(1) or tolist(self))
    return calls


def prefill_and_step_ops(layout: str, kernels: str, padded: bool):
    model = random_model(tiny_config(layout=layout, mamba_chunk_size=16), dtype=torch.float32)
    input_ids = torch.randint(0, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(input_ids)
    if padded:
        mask[0, :3] = 0
    caches = model.allocate_caches(2, 7 + 4)
    with torch.inference_mode(), ops.use_kernels(kernels):
        seq_idx, positions, next_positions, document = prompt_layout(mask if padded else None, 2, 7, input_ids.device)
        # the first prefill of a model builds the constants the later ones and decoding reuse
        prefill(model, input_ids, model.allocate_caches(2, 7 + 4), seq_idx, positions)
        prefill_counter = CountOps()
        with prefill_counter:
            logits = prefill(model, input_ids, caches, seq_idx, positions)
        step = DecodeStep(model, caches, next_positions, document)
        step_counter = CountOps()
        with step_counter:
            step(logits.argmax(-1))
    return prefill_counter.counts, step_counter.counts


@pytest.mark.parametrize("padded", [False, True], ids=["plain", "left-padded"])
@pytest.mark.parametrize("kernels", ["off", pytest.param("on", marks=kernels_on_cpu)])
def test_ops_per_block_of_prefill(kernels, padded, count_tolist):
    if kernels == "on":
        pytest.importorskip("triton")
    (one, _), (two, step) = (prefill_and_step_ops(layout, kernels, padded) for layout in ("P-", "P-P-"))
    per_block = sum(two.values()) - sum(one.values())
    print(f"kernels {kernels}, padded {padded}: {per_block} prefill ops per P- block")
    assert 0 < per_block <= MAX_OPS_PER_BLOCK[kernels, padded]
    per_block_ops = two - one
    # no layer rebuilds the multipliers, the rope tables or the document mask
    for name in ("aten.full", "aten.arange", "aten.le", "aten.neg"):
        assert per_block_ops[name] == 0, (name, per_block_ops[name])
    syncs = {name: counts[name] for counts in (two, step) for name in SYNC_OPS if counts[name]}
    assert not syncs and not count_tolist, (syncs, len(count_tolist))


def test_sync_ops_are_seen(count_tolist):
    """The dispatch mode sees what the host-sync check relies on."""
    counter = CountOps()
    t = torch.ones(3)
    with counter:
        bool(t.all()), t.sum().item(), t.nonzero()
    t.tolist()
    assert sum(counter.counts[name] for name in SYNC_OPS) >= 3 and count_tolist
