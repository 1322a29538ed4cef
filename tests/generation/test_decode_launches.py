"""The eager decode step is bound by op launches: count the tensor ops one decoded token costs per `P-`
block (a parallel hybrid layer and an MLP layer), the difference between a two-block and a one-block
model, so the per-token work outside the blocks (embedding, rope angles, head) cancels out.

Counted through a TorchDispatchMode (every aten op that reaches the dispatcher, views included) on the
reference ops, and with the fused kernels (the CUDA path; each kernel a single custom op), where Triton is
importable (the eager CUDA path launches the decode-step kernel without the custom op, which counts the
same: one op). Before the decode branches were trimmed: 205 (reference) and 124 (kernels) per block; then
132 and 80; now, with one rope roll over tables shared by the layers, fewer views and a leaner reference
step, 110 and 70; with the inference kernels (one each for the pre-norm, the conv step, rope with the cache
write and SwiGLU), 111 and 36 (SwiGLU at a token's size stays in PyTorch: fewer host microseconds than a
launch); with q, k and v as one product, 110 and 35. The bounds keep a small margin for harmless changes.
"""

from __future__ import annotations

import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hybridcore import ops
from hybridcore.generation import DecodeStep, prefill

from ..kernel_marks import kernels_on_cpu
from .helpers import random_model, tiny_config

MAX_OPS_PER_BLOCK = {"off": 113, "on": 37}


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def ops_per_decoded_token(layout: str, kernels: str) -> collections.Counter:
    model = random_model(tiny_config(layout=layout), dtype=torch.float32)
    input_ids = torch.randint(0, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    caches = model.allocate_caches(2, 7 + 4)
    with torch.inference_mode(), ops.use_kernels(kernels):
        logits = prefill(model, input_ids, caches)
        step = DecodeStep(model, caches, torch.full((2,), 7), document=0)
        logits = step(logits.argmax(-1))  # the first step may build constants once
        counter = CountOps()
        with counter:
            step(logits.argmax(-1))
    return counter.counts


@pytest.mark.parametrize("kernels", ["off", pytest.param("on", marks=kernels_on_cpu)])
def test_ops_per_block_per_decoded_token(kernels):
    if kernels == "on":
        pytest.importorskip("triton")
    one, two = (ops_per_decoded_token(layout, kernels) for layout in ("P-", "P-P-"))
    per_block = sum(two.values()) - sum(one.values())
    print(f"kernels {kernels}: {per_block} ops per P- block per decoded token")
    assert 0 < per_block <= MAX_OPS_PER_BLOCK[kernels]
    per_block_ops = two - one
    # no layer builds its own mask, slot range or multiplier vector per token
    for name in ("aten.arange", "aten.full", "aten.eq", "aten.le"):
        assert per_block_ops[name] == 0, (name, per_block_ops[name])
