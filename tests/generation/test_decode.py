"""Cached generation equals the cache-free loop; the recurrent Mamba step equals the chunked scan; the
decode step keeps every shape fixed (what CUDA-graph capture needs)."""

from __future__ import annotations

import pytest
import torch

import hybridcore
import hybridcore.model.attention as attention_module
import hybridcore.model.mamba2 as mamba2_module
from hybridcore.generation import DecodeStep, prefill
from hybridcore.model.cache import MambaCache
from hybridcore.model.layers import LayerInputs
from hybridcore.model.mamba2 import Mamba2Mixer

from ..kernel_marks import kernels_on_cpu
from .helpers import distinct_new_tokens, greedy_without_cache, random_model, tiny_config

NEW_TOKENS = 30


@pytest.mark.parametrize("layout", ["MM", "**", "PP", "M-*-P-"])
def test_greedy_equals_cache_free_loop(layout):
    model = random_model(tiny_config(layout=layout), seed=1)
    input_ids = torch.randint(0, model.config.vocab_size, (2, 13), generator=torch.Generator().manual_seed(0))
    got = hybridcore.generate(model, input_ids, NEW_TOKENS)
    assert distinct_new_tokens(got, 13) >= 5
    assert torch.equal(got, greedy_without_cache(model, input_ids, NEW_TOKENS))


@pytest.mark.parametrize("changes", [dict(attention_scale=0.9), dict(rope_fraction=0.5), dict(rope_fraction=0.0)],
                         ids=["attention_scale", "partial_rope", "no_rope"])
def test_attention_options_decode_as_the_cache_free_loop(changes):
    """The decode step applies a non-default softmax scale and rotates only the rotary channels, as forward does."""
    model = random_model(tiny_config(layout="*-P-", **changes), seed=2)
    input_ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    got = hybridcore.generate(model, input_ids, NEW_TOKENS)
    assert distinct_new_tokens(got, 9) >= 5
    assert torch.equal(got, greedy_without_cache(model, input_ids, NEW_TOKENS))


def test_float32_model_equals_cache_free_loop():
    model = random_model(tiny_config(layout="P-M*-"), seed=2, dtype=torch.float32)
    input_ids = torch.randint(0, model.config.vocab_size, (1, 10), generator=torch.Generator().manual_seed(1))
    assert torch.equal(hybridcore.generate(model, input_ids, 20), greedy_without_cache(model, input_ids, 20))


@kernels_on_cpu
def test_fused_kernels_generate_the_reference_tokens():
    """The Triton path (prefill kernels and the in-place decode step; on CPU through the interpreter)
    chooses the same greedy tokens as the reference path, for a batch with left padding."""
    pytest.importorskip("triton")
    from hybridcore import ops

    model = random_model(tiny_config(layout="P-M*-"), seed=3, dtype=torch.float32)
    input_ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(input_ids)
    mask[1, :3] = 0
    with ops.use_kernels("off"):
        expected = hybridcore.generate(model, input_ids, 12, attention_mask=mask)
    with ops.use_kernels("on"):
        got = hybridcore.generate(model, input_ids, 12, attention_mask=mask)
    assert distinct_new_tokens(expected, 9) >= 3
    assert torch.equal(got, expected)


@pytest.mark.parametrize("rms_norm,groups", [(True, 2), (False, 1)])
def test_recurrent_step_equals_chunked_scan(rms_norm, groups):
    """A prompt prefilled by the chunked scan, then token by token: the outputs and the final states
    equal one chunked pass over the whole sequence."""
    config = tiny_config(mamba_rms_norm=rms_norm, mamba_n_groups=groups)
    mixer = Mamba2Mixer(config).double()
    mixer.reset_parameters()
    torch.manual_seed(0)
    with torch.no_grad():
        for param in mixer.parameters():
            param.add_(torch.randn_like(param) * 0.3)
    u = torch.randn(2, 19, config.d_model, dtype=torch.float64)

    def new_cache():
        return MambaCache.allocate(2, config.mamba_conv_dim, config.mamba_d_conv, config.mamba_n_heads,
                                   config.mamba_d_head, config.mamba_d_state, "cpu", torch.float64)

    whole_cache, step_cache = new_cache(), new_cache()
    inputs = LayerInputs(torch.zeros(0), torch.zeros(0))  # the mixer reads no positions
    with torch.no_grad():
        whole = mixer(u, inputs, whole_cache)
        parts = [mixer(u[:, :11], inputs, step_cache)]
        parts += [mixer(u[:, t:t + 1], inputs, step_cache) for t in range(11, 19)]
    # The cache keeps the SSM state in fp32 between calls (and the gated norm runs in fp32), so the
    # agreement is fp32-close, not float64-exact; a wrong step would be off by O(1).
    torch.testing.assert_close(torch.cat(parts, dim=1), whole, rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(step_cache.ssm_state, whole_cache.ssm_state, rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(step_cache.conv_state, whole_cache.conv_state, rtol=1e-12, atol=1e-12)


def test_single_token_with_cache_takes_the_recurrent_step(monkeypatch):
    """Decoding must not pad one token up to a chunk: the chunked scan is never called for it."""
    model = random_model(tiny_config(layout="M"))
    calls = []
    chunked = mamba2_module.ssd

    def spy(x, *args, **kwargs):
        calls.append(x.shape[1])
        return chunked(x, *args, **kwargs)

    monkeypatch.setattr(mamba2_module, "ssd", spy)
    hybridcore.generate(model, torch.tensor([[1, 2, 3, 4, 5]]), 6)
    assert calls == [5]  # the prefill only


def test_decode_step_shapes_are_static(monkeypatch):
    """Every decode step attends over the whole preallocated cache: the same shapes at every step."""
    model = random_model(tiny_config(layout="P-*-"))
    key_shapes = []
    sdpa = attention_module.F.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        key_shapes.append((tuple(q.shape), tuple(k.shape), tuple(kwargs["attn_mask"].shape)))
        assert "enable_gqa" not in kwargs  # the query heads of a key head ride in the query dimension
        return sdpa(q, k, v, **kwargs)

    input_ids = torch.randint(0, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    expected = greedy_without_cache(model, input_ids, 9)[:, 7:]
    caches = model.allocate_caches(2, 7 + 9)
    with torch.inference_mode():
        logits = prefill(model, input_ids, caches)
        step = DecodeStep(model, caches, torch.full((2,), 7), document=0)
        monkeypatch.setattr(attention_module.F, "scaled_dot_product_attention", spy)
        outputs = []
        for _ in range(9):
            tokens = logits.argmax(-1)
            outputs.append(tokens)
            logits = step(tokens)
    assert len(key_shapes) == 9 * 2 and len(set(key_shapes)) == 1
    assert key_shapes[0][1][2] == 7 + 9  # keys: every slot of the cache
    assert all(c.attention.decode is step.slots for c in caches if c.attention is not None)  # one shared slot
    assert int(step.slots.slot) == 7 + 9
    assert torch.equal(torch.stack(outputs, dim=1), expected)


def test_cache_memory_is_constant_in_mamba_layers():
    """A pure Mamba model's cache does not grow with the number of generated tokens."""
    model = random_model(tiny_config(layout="MM"))
    short, long = model.allocate_caches(1, 8), model.allocate_caches(1, 800)
    sizes = [sum(c.mamba.conv_state.numel() + c.mamba.ssm_state.numel() for c in caches) for caches in (short, long)]
    assert sizes[0] == sizes[1] and all(c.attention is None for c in long)
