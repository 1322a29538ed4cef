"""The fused gated norm of one group that spans the tensor-parallel ranks compiles whole with its
all-reduces (functional collectives through `collectives.all_sum`) and matches the whole group's reference.
One process on a one-rank gloo group: the collectives trace as they would over more ranks; the
arithmetic across ranks is checked in tests/ops/test_kernels.py."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

pytest.importorskip("triton")

from hybridcore.ops import fused_conv  # noqa: E402
from hybridcore.ops.norm import gated_rms_norm_ref  # noqa: E402
from hybridcore.parallel import collectives  # noqa: E402


@pytest.fixture
def one_rank_group(tmp_path):
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("norm_before_gate", [False, True])
def test_spanning_gated_norm_compiles_whole_with_its_all_reduces(one_rank_group, norm_before_gate):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    generator = torch.Generator().manual_seed(0)
    y, z = (torch.randn(2, 3, 32, generator=generator).requires_grad_() for _ in range(2))
    w = torch.randn(32, generator=generator).requires_grad_()

    def norm(y, z, w):
        return fused_conv.gated_rms_norm_spanning(y, z, w, 32, 1e-5, norm_before_gate,
                                                  lambda x: collectives.all_sum(x, one_rank_group))

    out = torch.compile(norm, fullgraph=True, backend="aot_eager")(y, z, w)
    grads = torch.autograd.grad(out.square().sum(), [y, z, w])
    ref = gated_rms_norm_ref(y, z, w, 1, 1e-5, norm_before_gate)
    ref_grads = torch.autograd.grad(ref.square().sum(), [y, z, w])
    assert not counters["graph_break"]
    assert counters["stats"]["unique_graphs"] == 1
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-6)
    for got, expected in zip(grads, ref_grads):
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
