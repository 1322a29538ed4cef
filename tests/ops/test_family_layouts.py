"""The kernels under the other families' switches: a Nemotron-H-shaped model (8 Mamba groups, attention
without RoPE, squared-ReLU MLP) and a Bamba/Granite-shaped one (partial RoPE, scaled attention and logits)
give the same loss and gradients with the kernels on (Triton's interpreter on CPU) as with them off."""

import pytest
import torch

from hybridcore import ops
from hybridcore.model import build_model
from tests.parallel.common import NEMOTRON_H, tiny_config

SHAPES = {
    "nemotron-h": ("M-*-", NEMOTRON_H),
    "partial-rope-scaled": ("M-*-", dict(rope_fraction=0.5, attention_scale=0.2, logits_divisor=2.0)),
}


@pytest.mark.parametrize("name", SHAPES)
def test_kernels_agree_with_the_reference_under_each_family_shape(name, device):
    layout, switches = SHAPES[name]
    model = build_model(tiny_config(layout, **switches), device=device, seed=0)
    ids = torch.randint(0, 64, (2, 21), generator=torch.Generator().manual_seed(0)).to(device)
    labels = torch.roll(ids, -1, dims=1)
    results = {}
    for mode in ("off", "on"):
        model.zero_grad(set_to_none=True)
        with ops.use_kernels(mode):
            loss = model(ids, labels=labels)
        loss.backward()
        results[mode] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    (loss_off, grads_off), (loss_on, grads_on) = results["off"], results["on"]
    assert abs(loss_on - loss_off) <= 1e-5 * abs(loss_off)
    for name_, grad in grads_off.items():
        torch.testing.assert_close(grads_on[name_], grad, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name_}: {m}")
