"""The decode attention kernel (triton_attention.py) against its twin, SDPA with the decode step's additive
mask: on CPU through Triton's interpreter at small shapes, on the GPU at the same. The kernel computes in
fp32 and rounds once, so bf16 is checked against the twin in fp32 on the same inputs, to a bf16 step."""

import pytest
import torch

pytest.importorskip("triton")

from hybridcore import ops  # noqa: E402
from hybridcore.ops import fused_decode, triton_attention  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.bfloat16: dict(rtol=2 ** -7, atol=2e-3)}


def decode_inputs(batch, kv_heads, group, head_dim, length, slot, dtype, padding=0, seed=0):
    """q, keys, values, mask, slot as the decode step holds them: the mask a slice of rows padded to 8
    elements, 0 up to the slot and -inf after; row 1 (if any) left-padded by `padding` slots."""
    g = torch.Generator().manual_seed(seed)
    q, keys, values = (torch.randn(*shape, generator=g).to(DEVICE, dtype) for shape in
                       [(batch, kv_heads, group, head_dim)] + [(batch, kv_heads, length, head_dim)] * 2)
    mask = torch.full((batch, 1, 1, -(-length // 8) * 8), float("-inf"), device=DEVICE, dtype=dtype)[..., :length]
    mask[..., :slot + 1] = 0.0
    if batch > 1:
        mask[1, ..., :padding] = float("-inf")
    return q, keys, values, mask, torch.tensor([slot], device=DEVICE)


def reference(q, keys, values, mask, slot):
    return ops.decode_attention_ref(q.float(), keys.float(), values.float(), mask.float(), slot)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch,kv_heads,group,head_dim,length,slot,padding", [
    (1, 2, 4, 64, 300, 200, 0),  # falcon-h1-0.5b's grouping, split over the keys
    (2, 3, 3, 40, 97, 96, 5),  # a group and head size that are not powers of two; a left-padded row
    (1, 1, 1, 16, 10, 3, 0),  # one split: the first kernel writes the output
    (3, 1, 8, 32, 70, 0, 0),  # the first decoded token: one key
])
def test_decode_attention_matches_sdpa(dtype, batch, kv_heads, group, head_dim, length, slot, padding):
    inputs = decode_inputs(batch, kv_heads, group, head_dim, length, slot, dtype, padding)
    got = triton_attention.decode_attention(*inputs)
    assert got.dtype == dtype and got.shape == inputs[0].shape
    torch.testing.assert_close(got.float(), reference(*inputs), **TOLERANCE[dtype])


def test_keys_after_the_slot_are_not_read():
    """The cache past the slot is skipped: NaN there changes nothing (the twin, through the mask alone,
    would read it)."""
    q, keys, values, mask, slot = decode_inputs(2, 2, 4, 32, 120, 50, torch.float32, padding=3)
    want = reference(q, keys, values, mask, slot)
    keys[:, :, 51:], values[:, :, 51:] = float("nan"), float("nan")
    torch.testing.assert_close(triton_attention.decode_attention(q, keys, values, mask, slot), want,
                               **TOLERANCE[torch.float32])


@pytest.mark.parametrize("programs", [1, 4, 64, 200])
def test_any_number_of_splits_gives_the_same_attention(monkeypatch, programs):
    """One split (written directly), a few, or the most the second kernel combines (MAX_SPLITS)."""
    monkeypatch.setattr(triton_attention, "_programs_wanted", lambda device: programs)
    inputs = decode_inputs(1, 2, 4, 64, 1100, 1000, torch.float32)
    torch.testing.assert_close(triton_attention.decode_attention(*inputs), reference(*inputs),
                               **TOLERANCE[torch.float32])


def test_dispatch_takes_the_kernel_only_without_gradients(monkeypatch):
    calls = []
    twin = ops.decode_attention_ref
    monkeypatch.setattr(triton_attention, "decode_attention", lambda *a: calls.append(1) or twin(*a))
    monkeypatch.setattr(fused_decode, "INTERPRET", False)  # launch the (patched) kernel directly
    q, keys, values, mask, slot = decode_inputs(1, 2, 4, 16, 20, 7, torch.float32)
    with ops.use_kernels("on"):
        ops.decode_attention(q.requires_grad_(), keys, values, mask, slot).sum().backward()
        assert calls == [] and q.grad is not None
        with torch.no_grad():
            ops.decode_attention(q, keys, values, mask, slot)
    assert calls == [1]


@pytest.mark.parametrize("mode,capturing,kernel", [("auto", True, True), ("auto", False, False),
                                                    ("on", False, True)])
def test_eager_decoding_keeps_sdpa_and_a_captured_step_takes_the_kernel(monkeypatch, mode, capturing, kernel):
    """By default the split kernel runs only while a CUDA graph records the step (its GPU time counts
    there); eager decoding is bound by host time, where SDPA's one launch costs less. Forced on, it
    always runs (the tests' way to reach it on a CPU)."""
    calls = []
    twin = ops.decode_attention_ref
    monkeypatch.setattr(triton_attention, "decode_attention", lambda *a: calls.append(1) or twin(*a))
    monkeypatch.setattr(fused_decode, "INTERPRET", False)
    monkeypatch.setattr(ops, "kernels_active", lambda t: True)  # as on a CUDA tensor
    monkeypatch.setattr(ops, "capturing_cuda_graph", lambda t: capturing)
    inputs = decode_inputs(1, 2, 4, 16, 20, 7, torch.float32)
    with ops.use_kernels(mode), torch.no_grad():
        torch.testing.assert_close(ops.decode_attention(*inputs), twin(*inputs))
    assert calls == ([1] if kernel else [])


def test_the_warm_up_before_a_capture_takes_the_captured_kernel(monkeypatch):
    """DecodeStep's eager run before it records the graph compiles, loads and runs what the graph will."""
    calls = []
    twin = ops.decode_attention_ref
    monkeypatch.setattr(triton_attention, "decode_attention", lambda *a: calls.append(1) or twin(*a))
    monkeypatch.setattr(fused_decode, "INTERPRET", False)
    # as on a CUDA tensor (outside any capture), where only "off" turns the kernels off
    monkeypatch.setattr(ops, "kernels_active", lambda t: ops._MODE != "off")
    inputs = decode_inputs(1, 2, 4, 16, 20, 7, torch.float32)
    with torch.no_grad():
        with ops.graph_capture_kernels():
            ops.decode_attention(*inputs)
        assert calls == [1]
        ops.decode_attention(*inputs)  # after it, eager decoding is back on SDPA
        assert calls == [1]
        with ops.use_kernels("off"), ops.graph_capture_kernels():  # kernels turned off stay off
            ops.decode_attention(*inputs)
        assert calls == [1]


def test_unsupported_layouts_keep_the_twin():
    q, keys, values, mask, _ = decode_inputs(1, 2, 4, 16, 20, 7, torch.float32)
    assert fused_decode.decode_attention_supported(q, keys, values, mask)
    assert not fused_decode.decode_attention_supported(q, keys.transpose(2, 3).contiguous().transpose(2, 3),
                                                        values, mask)  # keys not unit stride on D
    assert not fused_decode.decode_attention_supported(q.to(torch.bfloat16), keys, values, mask)
    assert not fused_decode.decode_attention_supported(q, keys, values, mask[..., :10])
