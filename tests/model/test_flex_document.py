"""FlexAttention for packed documents (model/flex_document.py) against the boolean-mask SDPA path.

FlexAttention has no backward on CPU, so CI compares forwards (the block mask's meaning: causal, same
document, grouped heads), the block mask against FlexAttention's own create_block_mask, and the routing;
the GPU test compares a compiled layer's forward and gradients with the eager mask path's."""

import types

import pytest
import torch
import torch.nn.functional as F

from hybridcore.model import attention, flex_document
from hybridcore.model.attention import Attention, document_causal_mask
from hybridcore.model.layers import LayerInputs
from hybridcore.model.rope import rope_cos_sin

from .conftest import tiny_config

pytestmark = pytest.mark.skipif(flex_document.flex_attention is None, reason="FlexAttention needs torch >= 2.5")

# Borders inside and across 128-token blocks, a one-token document, and a row that is one document.
LENGTH = 300
BORDERS = [[0, 1, 130, 131, 257], [0]]


def document_ids(device="cpu") -> torch.Tensor:
    seq_idx = torch.zeros(len(BORDERS), LENGTH, dtype=torch.long, device=device)
    for row, borders in enumerate(BORDERS):
        for start in borders[1:]:
            seq_idx[row, start:] += 1
    return seq_idx


@pytest.mark.filterwarnings("ignore::UserWarning")  # flex_attention warns that eager runs unfused
def test_block_mask_means_causal_inside_documents():
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, LENGTH, 16, generator=generator)
    k, v = (torch.randn(2, 2, LENGTH, 16, generator=generator) for _ in range(2))
    seq_idx, slots = document_ids(), torch.arange(LENGTH)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=document_causal_mask(seq_idx, seq_idx, slots, slots),
                                              enable_gqa=True)
    mask = flex_document.document_block_mask(seq_idx)
    torch.testing.assert_close(flex_document.flex_document_attention(q, k, v, mask, enable_gqa=True), expected)


def _block_sets(counts: torch.Tensor, indices: torch.Tensor) -> list:
    """A BlockMask's ordered (count, indices) as the set of key blocks of each (row, query block)."""
    return [[set(indices[b, 0, i, :counts[b, 0, i]].tolist()) for i in range(counts.shape[2])]
            for b in range(counts.shape[0])]


@pytest.mark.parametrize("length,block_size", [(300, 128), (512, 128), (300, 64), (1000, 128), (64, 128),
                                               (128, 128)])
def test_block_mask_has_the_blocks_create_block_mask_finds(length, block_size):
    """Partial and full blocks as FlexAttention's own create_block_mask finds them by evaluating the mask:
    documents of random lengths (some shorter than a block, some spanning several), a padded last block,
    rows of one block or less, and ids that recur later in a row (a new document, as for the Mamba state)."""
    from torch.nn.attention.flex_attention import create_block_mask

    generator = torch.Generator().manual_seed(length + block_size)
    starts = torch.rand(3, length, generator=generator) < torch.tensor([[0.002], [0.02], [0.2]])
    seq_idx = starts.long().cumsum(dim=1)
    seq_idx[2] %= 3  # 0, 1, 2, 0, 1, ...: recurring ids
    runs = flex_document.document_runs(seq_idx)

    def causal_same_run(b, h, q_index, kv_index):
        return (kv_index <= q_index) & (runs[b, q_index] == runs[b, kv_index])

    ours = flex_document.document_block_mask(seq_idx, block_size)
    theirs = create_block_mask(causal_same_run, 3, None, length, length, device="cpu", BLOCK_SIZE=block_size)
    assert _block_sets(ours.kv_num_blocks, ours.kv_indices) == _block_sets(theirs.kv_num_blocks, theirs.kv_indices)
    assert (_block_sets(ours.full_kv_num_blocks, ours.full_kv_indices)
            == _block_sets(theirs.full_kv_num_blocks, theirs.full_kv_indices))
    if length >= 2 * block_size:  # not vacuous: some key blocks are wholly visible
        assert any(any(row) for row in _block_sets(ours.full_kv_num_blocks, ours.full_kv_indices))


def test_document_runs_number_runs_of_equal_ids():
    assert flex_document.document_runs(torch.tensor([[4, 4, 5, 5, 4], [0, 0, 0, 0, 0]])).tolist() == [
        [0, 0, 1, 1, 2], [0, 0, 0, 0, 0]]


def test_a_new_block_mask_each_step_does_not_recompile_the_layer(monkeypatch):
    """The mask comes with each batch (its mask_mod a new closure over new ids): the compiled layer keeps
    one graph, and its outputs follow each batch's documents."""
    from torch._dynamo.testing import CompileCounter

    monkeypatch.setattr(attention, "flex_document_attention_applies", lambda q: torch.compiler.is_compiling())
    layer, x, _ = _layer_and_inputs("cpu", torch.float32)
    frames = CompileCounter()
    compiled = torch.compile(layer, backend=frames, fullgraph=True)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for _ in range(3):
            seq_idx = (torch.rand(2, LENGTH, generator=generator) < 0.02).long().cumsum(dim=1)
            inputs = _inputs(seq_idx)
            plain = LayerInputs(inputs.cos, inputs.sin, seq_idx)  # no block mask: the SDPA mask path
            torch.testing.assert_close(compiled(x, inputs), layer(x, plain))
    assert frames.frame_count == 1


def test_a_block_mask_is_built_where_compiled_layers_may_use_it(monkeypatch):
    from types import SimpleNamespace

    from hybridcore.model.parallelism import WHOLE_SEQUENCE

    assert WHOLE_SEQUENCE.document_mask(document_ids()) is None  # CPU
    assert WHOLE_SEQUENCE.document_mask(None) is None
    cuda_ids = SimpleNamespace(is_cuda=True)
    assert flex_document.document_mask_wanted(cuda_ids)
    with torch.no_grad():
        assert not flex_document.document_mask_wanted(cuda_ids)
    monkeypatch.setattr(flex_document, "ENABLED", False)
    assert not flex_document.document_mask_wanted(cuda_ids)


def test_applies_only_inside_a_compiled_region_on_cuda_unless_switched_off(monkeypatch):
    from types import SimpleNamespace

    applies = flex_document.flex_document_attention_applies
    cuda_query, cpu_query = SimpleNamespace(is_cuda=True), SimpleNamespace(is_cuda=False)
    assert not applies(cuda_query)  # eager
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert applies(cuda_query) and not applies(cpu_query)
    with torch.no_grad():  # evaluation keeps the SDPA paths (flex_document's docstring says why)
        assert not applies(cuda_query)
    monkeypatch.setattr(flex_document, "ENABLED", False)  # HYBRIDCORE_FLEX_ATTENTION=0
    assert not applies(cuda_query)


CONFIG = dict(num_heads=4, num_kv_heads=2, head_dim=16, d_model=64, max_seq_len=LENGTH)


def _inputs(seq_idx: torch.Tensor) -> LayerInputs:
    """Layer inputs of packed rows, with the block mask a forward builds for compiled layers."""
    positions = torch.arange(LENGTH, device=seq_idx.device).expand(seq_idx.shape[0], LENGTH)
    cos, sin = rope_cos_sin(positions, CONFIG["head_dim"], tiny_config(**CONFIG).rope_theta)
    return LayerInputs(cos, sin, seq_idx, document_mask=flex_document.document_block_mask(seq_idx))


def _layer_and_inputs(device, dtype):
    layer = Attention(tiny_config(**CONFIG)).to(device=device, dtype=dtype)
    x = torch.randn(2, LENGTH, 64, device=device, dtype=dtype, generator=torch.Generator(device).manual_seed(1))
    return layer, x, _inputs(document_ids(device))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_attention_layer_routes_packed_rows_through_flex(monkeypatch):
    """When flex applies, the layer's attention takes it (forward only: no CPU backward) and agrees."""
    layer, x, inputs = _layer_and_inputs("cpu", torch.float32)
    with torch.no_grad():
        expected = layer(x, inputs)
        calls = []
        real = flex_document.flex_document_attention
        monkeypatch.setattr(attention, "flex_document_attention_applies", lambda q: True)
        monkeypatch.setattr(attention, "flex_document_attention", lambda *a: calls.append(1) or real(*a))
        routed = layer(x, inputs)
        layer.flex_for_documents = False  # as under activation checkpointing
        layer(x, inputs)
    assert calls == [1]
    torch.testing.assert_close(routed, expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention's backward and fused kernel need CUDA")
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 2e-5), (torch.bfloat16, 2e-2)])
def test_compiled_layer_uses_flex_and_matches_the_mask_path(dtype, tolerance, monkeypatch):
    layer, x, inputs = _layer_and_inputs("cuda", dtype)
    calls, real = [], flex_document.flex_document_attention
    monkeypatch.setattr(attention, "flex_document_attention", lambda *a: calls.append(1) or real(*a))
    compiled = torch.compile(layer)
    outputs, grads = [], []
    for run in (layer, compiled):
        xi = x.clone().requires_grad_()
        out = run(xi, inputs)
        out.float().square().sum().backward()
        outputs.append(out.float())
        grads.append([xi.grad.float()] + [p.grad.float().clone() for p in layer.parameters()])
        layer.zero_grad(set_to_none=True)
    assert calls, "the compiled layer did not take FlexAttention"
    scale = outputs[0].abs().max()
    assert (outputs[0] - outputs[1]).abs().max() <= tolerance * scale
    for eager, flex in zip(*grads):
        assert (eager - flex).abs().max() <= tolerance * eager.abs().max()


def test_activation_checkpointing_keeps_documents_on_sdpa():
    from hybridcore.model import build_model
    from hybridcore.parallel import parallelize

    model = build_model(tiny_config(layout="P*-"))
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    assert len(layers) == 2 and all(layer.flex_for_documents for layer in layers)
    parallelize(model, activation_checkpointing=True)
    assert not any(layer.flex_for_documents for layer in layers)


@pytest.mark.parametrize("capability,head_dim,tuned", [((9, 0), 64, True), ((9, 0), 128, False),
                                                       ((8, 0), 64, False), (None, 64, False)])
def test_block_sizes_only_where_measured(monkeypatch, capability, head_dim, tuned):
    """The tuned block sizes on Hopper at heads of 64 or less; FlexAttention's own choice elsewhere
    (other GPUs have other shared-memory limits)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: capability is not None)
    properties = types.SimpleNamespace(major=capability[0] if capability else None)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: properties)
    options = flex_document.flex_kernel_options(head_dim, "cuda:0")
    assert (options == flex_document.SMALL_HEAD_OPTIONS) if tuned else options is None
    assert flex_document.flex_kernel_options(64, "cpu") is None


def test_block_sizes_are_a_constant_inside_a_compiled_layer(monkeypatch):
    """The device query runs once at trace time, without a graph break."""
    from torch._dynamo.testing import CompileCounter

    monkeypatch.setattr(flex_document, "_is_hopper", torch.compiler.assume_constant_result(lambda index: True))
    frames = CompileCounter()
    probe = torch.compile(lambda x: x + len(flex_document.flex_kernel_options(64, "cuda") or ()), backend=frames,
                          fullgraph=True)
    assert probe(torch.zeros(1)).item() == len(flex_document.SMALL_HEAD_OPTIONS)
    assert frames.frame_count == 1
