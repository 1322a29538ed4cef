"""The inference kernels (triton_decode.py) against their PyTorch twins, on CPU through Triton's
interpreter: fp32 to rounding, and bf16, where both round at the same points, to one bf16 step at most
on the GPU (the interpreter truncates to bf16 where the GPU rounds to nearest: a step at each rounding).
Also: the dispatchers use a kernel only with gradients off and keep the reference under autograd."""

import pytest
import torch

pytest.importorskip("triton")

from hybridcore import ops  # noqa: E402
from hybridcore.ops import fused_decode, triton_decode  # noqa: E402
from hybridcore.ops.rope import rope_tables  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# fp32: sums in another order; bf16: one step of bf16 where a rounding falls the other way (GPU), or a
# step for each of up to three truncations (the interpreter)
BF16_STEPS = 1 if DEVICE == "cuda" else 3
TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=1e-6),
             torch.bfloat16: dict(rtol=BF16_STEPS * 2 ** -7, atol=BF16_STEPS * 1e-3)}
DTYPES = [torch.float32, torch.bfloat16]


def randn(*shape, dtype=torch.float32, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(DEVICE, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight_in_fp32", [False, True])
def test_rms_norm(dtype, weight_in_fp32):
    x = randn(3, 5, 96, dtype=dtype, scale=3.0)
    weight = randn(96, dtype=dtype, seed=1)
    got = triton_decode.rms_norm(x, weight, 1e-5, weight_in_fp32)
    want = ops.rms_norm_ref(x, weight, 1e-5, weight_in_fp32)
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got, want, **TOLERANCE[dtype])


def test_rms_norm_promotes_like_the_reference():
    """An fp32 weight over bf16 activations gives fp32, as weight * x does."""
    x, weight = randn(2, 64, dtype=torch.bfloat16), randn(64, seed=1)
    got = triton_decode.rms_norm(x, weight, 1e-6, False)
    assert got.dtype == torch.float32
    # one rounding to bf16 before the fp32 weight
    torch.testing.assert_close(got, ops.rms_norm_ref(x, weight, 1e-6, False), **TOLERANCE[torch.bfloat16])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias,silu,width", [(True, True, 4), (False, True, 4), (True, False, 3), (True, True, 2)])
def test_conv_step(dtype, bias, silu, width):
    batch, channels = 3, 40
    # x as the decode step gets it: a slice of a wider projection
    x = randn(batch, channels + 7, dtype=dtype)[:, 3:3 + channels]
    weight = randn(channels, width, dtype=dtype, seed=1, scale=0.5)
    b = randn(channels, dtype=dtype, seed=2) if bias else None
    state = randn(batch, channels, width - 1, dtype=dtype, seed=3)
    state_ref = state.clone()
    got = triton_decode.conv_step(x, state, weight, b, silu)
    want = ops.causal_conv1d_step_ref(x, state_ref, weight, b, silu)
    torch.testing.assert_close(got, want, **TOLERANCE[dtype])
    assert torch.equal(state, state_ref)  # the window moved by one, exactly


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rotary,query_multiplier,length", [(16, None, 1), (8, 0.7, 1), (0, None, 1), (16, 0.7, 3)])
def test_rope_cache_write(dtype, rotary, query_multiplier, length):
    """One decoded token at a slot, or a prompt's tokens at the next slots of a cache."""
    batch, q_heads, kv_heads, head_dim, capacity = 2, 4, 2, 16, 9
    q = randn(batch, length, q_heads * head_dim, dtype=dtype)
    k = randn(batch, length, kv_heads * head_dim, dtype=dtype, seed=1)
    v = randn(batch, length, kv_heads * head_dim, dtype=dtype, seed=2)
    angles = randn(batch, length, rotary, seed=3, scale=3.0)
    cos, signed_sin = rope_tables(angles.cos(), angles.sin())
    keys, values = (randn(batch, kv_heads, capacity, head_dim, dtype=dtype, seed=s) for s in (4, 5))
    keys_ref, values_ref = keys.clone(), values.clone()
    slots = torch.arange(5, 5 + length, device=DEVICE)
    got = triton_decode.rope_cache_write(q, k, v, cos, signed_sin, 0.8, query_multiplier, keys, values, slots)
    want = ops.rope_cache_write_ref(q, k, v, cos, signed_sin, 0.8, query_multiplier, keys_ref, values_ref, slots)
    assert got.shape == want.shape == (batch, length, q_heads, head_dim)
    torch.testing.assert_close(got, want, **TOLERANCE[dtype])
    torch.testing.assert_close(keys, keys_ref, **TOLERANCE[dtype])
    assert torch.equal(values, values_ref)
    untouched = [s for s in range(capacity) if s not in slots.tolist()]
    assert torch.equal(keys[:, :, untouched], keys_ref[:, :, untouched])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("multiplier", [0.6, 1.0])
def test_swiglu(dtype, multiplier):
    # gate as the Mamba-2 gate gets z: a slice of a wider projection
    gate = randn(2, 3, 1600, dtype=dtype, scale=2.0)[..., 40:1540]
    up = randn(2, 3, 1500, dtype=dtype, seed=1)
    got = triton_decode.swiglu(gate, up, multiplier)
    torch.testing.assert_close(got, ops.swiglu_ref(gate, up, multiplier), **TOLERANCE[dtype])
    assert got.is_contiguous()


def test_dispatch_only_without_gradients(monkeypatch):
    """With gradients on, the ops are their twins (autograd flows); off, the kernel runs."""
    calls = []
    monkeypatch.setattr(triton_decode, "swiglu", lambda *a: calls.append(1) or ops.swiglu_ref(*a))
    monkeypatch.setattr(fused_decode, "INTERPRET", False)  # launch the (patched) kernel directly
    monkeypatch.setattr(fused_decode, "SWIGLU_MIN_ELEMENTS", 1)
    gate = randn(4, 8).requires_grad_()
    up = randn(4, 8, seed=1)
    with ops.use_kernels("on"):
        ops.swiglu(gate, up, 0.5).sum().backward()
        assert calls == [] and gate.grad is not None
        with torch.no_grad():
            ops.swiglu(gate, up, 0.5)
    assert calls == [1]
    monkeypatch.setattr(fused_decode, "SWIGLU_MIN_ELEMENTS", 64)  # a decoding token's few: the PyTorch ops
    with torch.no_grad():
        ops.swiglu(gate, up, 0.5)
    assert calls == [1]


def test_a_kernel_that_fails_here_leaves_the_work_to_its_twin(monkeypatch):
    """A kernel that does not build on this machine warns once; its twin answers then and from then on."""
    calls = []

    def broken(*args):
        calls.append(1)
        raise RuntimeError("no such instruction")
    monkeypatch.setattr(fused_decode, "_FAILED", set())
    monkeypatch.setattr(fused_decode, "INTERPRET", False)
    monkeypatch.setattr(triton_decode, "swiglu", broken)
    gate, up = randn(3, 8), randn(3, 8, seed=1)
    with pytest.warns(UserWarning, match="swiglu inference kernel failed"):
        first = fused_decode.swiglu(gate, up, 0.5)
    second = fused_decode.swiglu(gate, up, 0.5)
    assert calls == [1]
    assert torch.equal(first, ops.swiglu_ref(gate, up, 0.5)) and torch.equal(second, first)


def test_a_tensor_subclass_keeps_the_twin():
    """A DTensor (or any subclass) goes to the twin, which dispatches through it; parameters are plain."""
    class Wrapped(torch.Tensor):
        pass
    x = randn(2, 16)
    weight = torch.nn.Parameter(randn(16, seed=1))
    assert fused_decode.rms_norm_supported(x, weight)
    assert not fused_decode.rms_norm_supported(x.as_subclass(Wrapped), weight)
