"""Each fused Triton kernel against its pure-PyTorch twin (small shapes; on CPU via the interpreter),
the custom ops' registrations (opcheck), and torch.compile(fullgraph=True) through one Mamba-2 layer."""

import math

import pytest
import torch

pytest.importorskip("triton")

from hybridcore import ops  # noqa: E402
from hybridcore.ops.norm import gated_rms_norm_ref  # noqa: E402
from hybridcore.ops import fused_conv, fused_ssd  # noqa: E402


# The SSD kernels' tl.dot rounds fp32 operands to TF32 on the GPU (about 1e-3 relative); the CPU
# interpreter multiplies in full fp32. A failure at chunk 16 beyond these bounds is more likely a block
# that does not fit the chunk than rounding: see test_kernels_with_each_gpu_config.
SSD_FP32_TOL, SSD_FP32_GRAD_TOL = (3e-3, 1e-2) if torch.cuda.is_available() else (1e-5, 1e-4)


def rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def ssd_inputs(device, batch=2, length=40, heads=4, head_dim=16, groups=2, state=16, init=False, docs=None, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g) * scale + shift).to(device).requires_grad_()
    t = dict(x=r(batch, length, heads, head_dim), dt=r(batch, length, heads), A=(-torch.rand(heads, generator=g) - 0.2)
             .to(device).requires_grad_(), B=r(batch, length, groups, state), C=r(batch, length, groups, state),
             D=r(heads), dt_bias=r(heads, scale=0.5))
    t["initial_state"] = r(batch, heads, head_dim, state) if init else None
    t["seq_idx"] = None
    if docs:
        t["seq_idx"] = torch.cat([torch.full((n,), i) for i, n in enumerate(docs)])[None].expand(batch, -1).to(device)
    return t


@pytest.mark.parametrize("case", ["plain", "docs", "docs+init", "limit", "one_group_chunk32", "three_heads_per_group"])
def test_ssd_kernel_matches_chunked_reference(case, device):
    check_ssd_case(case, device)


def check_ssd_case(case, device):
    kw = dict(docs=[5, 11, 1, 13, 10]) if case.startswith("docs") else {}
    chunk, limit = 16, (0.0, math.inf)
    if case == "docs+init":
        kw["init"] = True
    if case == "limit":
        limit = (0.1, 0.9)
    if case == "one_group_chunk32":
        kw.update(groups=1, length=50)
        chunk = 32
    if case == "three_heads_per_group":  # odd heads per group; P * N no power of two (state passing's tail block)
        kw.update(heads=6, head_dim=20, state=24, docs=[9, 31], init=True)
    t = ssd_inputs(device, **kw)
    args = (t["x"], t["dt"], t["A"], t["B"], t["C"], chunk)
    opts = dict(D=t["D"], dt_bias=t["dt_bias"], dt_softplus=True, dt_limit=limit, initial_state=t["initial_state"],
                seq_idx=t["seq_idx"], return_final_state=True)
    y, final = fused_ssd.ssd(*args, **opts)
    y_ref, final_ref = ops.ssd_chunked(*args, **opts)
    assert rel(y, y_ref) < SSD_FP32_TOL and rel(final, final_ref) < SSD_FP32_TOL
    gy, gf = torch.randn_like(y_ref), torch.randn_like(final_ref)
    leaves = {k: v for k, v in t.items() if isinstance(v, torch.Tensor) and v.requires_grad}
    grads = torch.autograd.grad((y * gy).sum() + (final * gf).sum(), list(leaves.values()))
    grads_ref = torch.autograd.grad((y_ref * gy).sum() + (final_ref * gf).sum(), list(leaves.values()))
    for name, a, b in zip(leaves, grads, grads_ref):
        assert rel(a, b) < SSD_FP32_GRAD_TOL, name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Triton's CPU interpreter computes bf16 tl.dot wrongly")
def test_ssd_kernel_bf16_inputs(device):
    t = ssd_inputs(device, docs=[17, 23])
    x, B, C = (t[k].detach().bfloat16() for k in ("x", "B", "C"))
    y = fused_ssd.ssd(x, t["dt"].detach(), t["A"].detach(), B, C, 16, D=t["D"].detach(), dt_softplus=True,
                      seq_idx=t["seq_idx"])
    y_ref = ops.ssd_chunked(x.float(), t["dt"].detach(), t["A"].detach(), B.float(), C.float(), 16, D=t["D"].detach(),
                            dt_softplus=True, seq_idx=t["seq_idx"])
    assert y.dtype == torch.bfloat16 and rel(y, y_ref) < 2e-2


@pytest.mark.parametrize("case", ["plain", "limit", "bf16", "one_group_no_D"])
def test_ssd_step_kernel_matches_recurrence(case, device):
    check_ssd_step_case(case, device)


def check_ssd_step_case(case, device):
    """Several decoding steps in a row: outputs and the in-place state against the reference step."""
    groups = 1 if case == "one_group_no_D" else 2
    t = ssd_inputs(device, batch=3, length=5, head_dim=20, groups=groups, state=24, init=True)
    t = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in t.items()}
    limit = (0.1, 0.9) if case == "limit" else (0.0, math.inf)
    D = None if case == "one_group_no_D" else t["D"]
    x, B, C = (t[k].bfloat16() if case == "bf16" else t[k] for k in ("x", "B", "C"))
    state, state_ref = t["initial_state"].clone(), t["initial_state"].clone()
    with torch.no_grad():
        for step in range(x.shape[1]):
            token = slice(step, step + 1)
            args = (x[:, token], t["dt"][:, token], t["A"], B[:, token], C[:, token])
            opts = dict(D=D, dt_bias=t["dt_bias"], dt_softplus=True, dt_limit=limit)
            y = fused_ssd.ssd_step(*args, state, **opts)
            y_ref = ops.ssd_step_ref(*args, state_ref, **opts)
            assert y.dtype == x.dtype and y.shape == y_ref.shape
            assert rel(y, y_ref) < (1e-2 if case == "bf16" else 1e-5), step
            assert rel(state, state_ref) < 1e-5, step
    assert rel(state, t["initial_state"]) > 1e-2  # the state did move


def test_ssd_step_dispatch_keeps_gradients_on_the_reference(device):
    t = ssd_inputs(device, length=1, init=True)
    with ops.use_kernels("on"):
        assert not fused_ssd.step_supported(t["x"], t["B"], t["initial_state"])  # grad mode: reference
        with torch.no_grad():
            assert fused_ssd.step_supported(t["x"], t["B"], t["initial_state"])


@pytest.mark.parametrize("docs", [False, True])
@pytest.mark.parametrize("init", [False, True])
def test_conv_kernel_matches_reference(docs, init, device):
    check_conv_case(docs, init, device)


def check_conv_case(docs, init, device):
    g = torch.Generator().manual_seed(1)
    batch, length, channels, width = 2, 37, 24, 4
    base = torch.randn(batch, length, channels + 5, generator=g).to(device)
    x = base[..., 2:2 + channels].requires_grad_()  # a strided slice, as the in_proj output gives it
    w = torch.randn(channels, width, generator=g).to(device).requires_grad_()
    b = torch.randn(channels, generator=g).to(device).requires_grad_()
    h0 = torch.randn(batch, channels, width - 1, generator=g).to(device).requires_grad_() if init else None
    seq_idx = None
    if docs:
        seq_idx = torch.cat([torch.full((n,), i) for i, n in enumerate([1, 2, 11, 23])])[None].expand(batch, -1)
        seq_idx = seq_idx.to(device)
    y, final = fused_conv.causal_conv1d(x, w, b, seq_idx=seq_idx, initial_state=h0, return_final_state=True)
    y_ref, final_ref = ops.causal_conv1d_ref(x, w, b, seq_idx=seq_idx, initial_state=h0, return_final_state=True)
    assert rel(y, y_ref) < 1e-6 and rel(final, final_ref) < 1e-6
    gy, gf = torch.randn_like(y_ref), torch.randn_like(final_ref)
    leaves = [x, w, b] + ([h0] if init else [])
    grads = torch.autograd.grad((y * gy).sum() + (final * gf).sum(), leaves)
    grads_ref = torch.autograd.grad((y_ref * gy).sum() + (final_ref * gf).sum(), leaves)
    for a, b_ in zip(grads, grads_ref):
        assert rel(a, b_) < 1e-5


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU autotunes over these configs itself")
@pytest.mark.parametrize("index", range(8))
def test_kernels_with_each_gpu_config(index, device, monkeypatch):
    """The interpreter runs each kernel with one small block config; the GPU picks among larger ones, which
    may exceed a chunk of 16 (a block of rows larger than the chunk reads and writes past it). Here
    every autotuned SSD and conv kernel runs its index-th GPU candidate, and every kernel the GPU's fixed
    block sizes."""
    from triton.runtime.autotuner import Autotuner

    from hybridcore.ops import triton_conv, triton_norm, triton_ssd, triton_ssd_step

    kernels = [k for module in (triton_ssd, triton_conv) for k in vars(module).values() if isinstance(k, Autotuner)]
    candidates = [triton_ssd.INTERPRETED_GPU_CONFIGS[id(kernel.configs)] for kernel in kernels]
    assert len(kernels) == 10 and max(map(len, candidates)) == 8  # every kernel, every candidate
    for kernel, gpu in zip(kernels, candidates):
        monkeypatch.setattr(kernel, "configs", [gpu[min(index, len(gpu) - 1)]])
    # the fixed block sizes chosen by platform, as on the GPU
    monkeypatch.setattr(triton_ssd, "INTERPRET", False)
    monkeypatch.setattr(triton_ssd_step, "INTERPRET", False)
    monkeypatch.setattr(triton_conv, "BWD_BLOCK_L", 64)
    monkeypatch.setattr(triton_norm, "BLOCK_R", 16)
    monkeypatch.setattr(triton_norm, "TILE_ELEMENTS", 4096)
    for case in ("docs+init", "one_group_chunk32", "three_heads_per_group"):
        check_ssd_case(case, device)
    check_conv_case(True, True, device)
    if index == 0:  # not autotuned: once is enough
        check_ssd_step_case("plain", device)
        check_gated_norm_case(True, 2, device)


def test_a_state_up_to_128_columns_is_held_whole_on_the_gpu(monkeypatch):
    """falcon-h1-0.5b's 128-column state is timed only with candidates that hold it whole (one slot, no
    partial sums); falcon-h1-7b's 256 columns with every candidate, split ones included."""
    from hybridcore.ops import triton_ssd

    monkeypatch.setattr(triton_ssd, "WHOLE_STATE", 128)
    gpu = triton_ssd.INTERPRETED_GPU_CONFIGS[id(triton_ssd._dbc_bwd_kernel.configs)]
    whole = triton_ssd._state_candidates(gpu, dict(N=128))
    assert len(whole) == 4 and {config.kwargs["BLOCK_N"] for config in whole} == {128}
    assert triton_ssd._state_candidates(gpu, dict(N=256)) == gpu and len({c.kwargs["BLOCK_N"] for c in gpu}) == 3


@pytest.mark.parametrize("name,blocks,more,fewer", [
    # a 24-column state in two column blocks, then in one; a head of 20 in two blocks of 16, then in one
    ("_dbc_bwd_kernel", dict(BLOCK_M=16, BLOCK_K=16), dict(BLOCK_N=16), dict(BLOCK_N=32)),
    ("_dx_bwd_kernel", dict(BLOCK_M=16, BLOCK_K=16, BLOCK_KN=16), dict(BLOCK_P=16), dict(BLOCK_P=32))])
def test_autotuning_leaves_no_partial_sums_behind(name, blocks, more, fewer, device, monkeypatch):
    """Candidates of these kernels write different numbers of partial-sum slots into the same buffers while
    they are timed; the one chosen, with fewer slots, must not add what a timed one left behind (the first
    backward's da and dD)."""
    import triton

    from hybridcore.ops import triton_ssd

    kernel = getattr(triton_ssd, name)
    more, fewer = (triton.Config({**blocks, **change}, num_warps=1, num_stages=1) for change in (more, fewer))
    timings = iter([2.0, 1.0])  # the candidate timed first, with more slots, is the slower
    monkeypatch.setattr(kernel, "configs", [more, fewer])
    monkeypatch.setattr(kernel, "cache", {})
    monkeypatch.setattr(kernel, "do_bench", lambda call, quantiles=None, **_: [call(), next(timings)][1:] * 3,
                        raising=False)
    check_ssd_case("three_heads_per_group", device)
    assert kernel.cache and next(iter(kernel.cache.values())) is fewer


@pytest.mark.parametrize("norm_before_gate", [False, True])
@pytest.mark.parametrize("groups", [1, 2])
def test_gated_norm_kernel_matches_reference(norm_before_gate, groups, device):
    check_gated_norm_case(norm_before_gate, groups, device)


def check_gated_norm_case(norm_before_gate, groups, device):
    g = torch.Generator().manual_seed(2)
    y = torch.randn(2, 7, 48, generator=g).to(device).requires_grad_()
    z = torch.randn(2, 7, 100, generator=g).to(device)[..., 10:58].requires_grad_()
    w = torch.randn(48, generator=g).to(device).requires_grad_()
    out = fused_conv.gated_rms_norm(y, z, w, groups, 1e-5, norm_before_gate)
    ref = gated_rms_norm_ref(y, z, w, groups, 1e-5, norm_before_gate)
    assert rel(out, ref) < 1e-6
    go = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad((out * go).sum(), [y, z, w]), torch.autograd.grad((ref * go).sum(), [y, z, w])):
        assert rel(a, b) < 1e-5


@pytest.mark.parametrize("norm_before_gate", [False, True])
def test_spanning_gated_norm_kernels_match_whole_group(norm_before_gate, device):
    """One norm group split over two ranks: each rank's fused output and gradients are its slice of the whole
    group's reference. One thread plays both ranks (Triton's interpreter is not thread-safe, and autograd
    runs a device's backward on one shared thread): a rank's partial sum depends only on what precedes its
    all-reduce, so each rank is replayed with the other's partials gathered so far, one all-reduce further
    each round."""
    g = torch.Generator().manual_seed(3)
    y = torch.randn(2, 5, 40, generator=g).to(device)
    z = torch.randn(2, 5, 40, generator=g).to(device)
    w = torch.randn(40, generator=g).to(device)
    go = torch.randn(2, 5, 40, generator=g).to(device)
    whole = [t.clone().requires_grad_() for t in (y, z, w)]
    ref = gated_rms_norm_ref(*whole, 1, 1e-5, norm_before_gate)
    ref_grads = torch.autograd.grad((ref * go).sum(), whole)

    def run_rank(rank, others):
        """This rank's output, gradients and the partial it contributed to each all-reduce; the all-reduces
        past those in `others` return the rank's own partial."""
        sent = []

        def all_sum(x):
            sent.append(x.clone())
            index = len(sent) - 1
            return x + others[index] if index < len(others) else x

        part = slice(20 * rank, 20 * rank + 20)
        mine = [t[..., part].clone().requires_grad_() for t in (y, z, w)]
        out = fused_conv.gated_rms_norm_spanning(*mine, 40, 1e-5, norm_before_gate, all_sum)
        grads = torch.autograd.grad((out * go[..., part]).sum(), mine)
        return out, grads, sent

    partials = [[], []]
    for _ in range(2):  # the forward's all-reduce, then the backward's
        partials = [run_rank(rank, partials[1 - rank])[2][:len(partials[rank]) + 1] for rank in range(2)]
    results = [run_rank(rank, partials[1 - rank]) for rank in range(2)]
    assert all(len(result[2]) == 2 for result in results), "one all-reduce forward, one backward"
    out = torch.cat([results[0][0], results[1][0]], dim=-1)
    assert rel(out, ref) < 1e-6
    for index, expected in enumerate(ref_grads):
        got = torch.cat([results[0][1][index], results[1][1][index]], dim=-1)
        assert rel(got, expected) < 1e-5, f"gradient {index}"


def test_dispatch_modes():
    x = torch.zeros(1)
    with ops.use_kernels("off"):
        assert not ops.kernels_active(x)
    with ops.use_kernels("auto"):
        assert ops.kernels_active(x) == x.is_cuda
    with ops.use_kernels("on"):
        assert ops.kernels_active(x)


def test_kernel_mode_from_the_environment():
    assert [ops._mode_from_env(v) for v in ("1", "0", "on")] == ["auto", "off", "on"]
    with pytest.raises(ValueError, match="HYBRIDCORE_KERNELS must be one of 1, 0, on, got 'yes'"):
        ops._mode_from_env("yes")


@pytest.mark.parametrize("mode", ["bogus", "ON", None, "false", 1])
def test_use_kernels_refuses_an_unknown_mode(mode):
    with pytest.raises(ValueError, match="mode must be 'auto', 'on', 'off', True or False"):
        with ops.use_kernels(mode):
            pass


def test_custom_ops_opcheck(device):
    t = ssd_inputs(device, batch=1, length=20, heads=2, groups=1, docs=[7, 13])
    args = (t["x"], t["dt"], t["A"], t["B"], t["C"], t["D"], t["dt_bias"], None, t["seq_idx"], 16, True, 0.0,
            math.inf)
    torch.library.opcheck(torch.ops.hybridcore.ssd_fwd.default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    x = torch.randn(1, 9, 8, device=device, requires_grad=True)
    w = torch.randn(8, 4, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.hybridcore.causal_conv1d_fwd.default, (x, w, None, None, None),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    step = ssd_inputs(device, batch=1, length=1, heads=2, groups=1, init=True)
    step = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in step.items()}
    torch.library.opcheck(torch.ops.hybridcore.ssd_step.default,
                          (step["x"], step["dt"], step["A"], step["B"], step["C"], step["initial_state"], step["D"],
                           step["dt_bias"], True, 0.0, math.inf), test_utils=("test_schema", "test_faketensor"))


def test_compile_fullgraph_one_mamba_layer(device):
    """torch.compile traces a whole Mamba-2 layer through the custom ops without a graph break."""
    from hybridcore.model.layers import LayerInputs, build_layer
    from tests.model.conftest import tiny_config

    config = tiny_config(layout="M", d_model=32, mamba_n_heads=4, mamba_d_head=16, mamba_d_state=16,
                         mamba_n_groups=2, mamba_chunk_size=16, mamba_d_conv=4)
    torch.manual_seed(0)
    layer = build_layer("M", config).to(device)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (0.8 if p.ndim == 1 else 0))
    h = torch.randn(2, 40, 32, device=device, requires_grad=True)
    inputs = LayerInputs(cos=None, sin=None, seq_idx=None)
    with ops.use_kernels("on"):
        compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
        out = compiled(h, inputs)
        grad = torch.autograd.grad(out.square().sum(), h)[0]
    with ops.use_kernels("off"):
        ref = layer(h, inputs)
        grad_ref = torch.autograd.grad(ref.square().sum(), h)[0]
    assert rel(out, ref) < SSD_FP32_TOL and rel(grad, grad_ref) < SSD_FP32_GRAD_TOL
