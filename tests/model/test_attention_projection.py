"""Attention.project: the cache paths' q, k, v through one product with the three weights joined when no
gradients are recorded, rebuilt when a weight changes, and three products under autograd."""

import torch

from hybridcore.model.attention import Attention

from .conftest import tiny_config


def layer_and_input(bias=True):
    torch.manual_seed(0)
    layer = Attention(tiny_config(attention_bias=bias))
    for parameter in layer.parameters():
        torch.nn.init.normal_(parameter)
    return layer, torch.randn(2, 5, 32)


def separate(layer, x):
    return layer.q_proj(x), layer.k_proj(x), layer.v_proj(x)


def test_without_gradients_one_product_gives_the_three_projections():
    for bias in (True, False):
        layer, x = layer_and_input(bias)
        with torch.no_grad():
            joined = layer.project(x)
            expected = separate(layer, x)
        assert layer._joined_projection(x)[0].shape == (4 * 8 + 2 * 2 * 8, 32)
        for got, want in zip(joined, expected):
            torch.testing.assert_close(got, want)


def test_a_changed_weight_rebuilds_the_joined_product():
    layer, x = layer_and_input()
    with torch.no_grad():
        layer.project(x)
        layer.k_proj.weight.add_(1.0)  # an optimizer step, or a loaded checkpoint
        torch.testing.assert_close(layer.project(x)[1], layer.k_proj(x))
        layer.v_proj.bias = torch.nn.Parameter(torch.zeros(16))  # a new parameter
        torch.testing.assert_close(layer.project(x)[2], layer.v_proj(x))


def test_under_autograd_each_weight_gets_its_gradient():
    layer, x = layer_and_input()
    q, k, v = layer.project(x)
    (q.sum() + 2 * k.sum() + 3 * v.sum()).backward()
    assert not layer.__dict__.get("_inference_values")
    for projection in (layer.q_proj, layer.k_proj, layer.v_proj):
        assert projection.weight.grad is not None


def test_a_tensor_subclass_keeps_three_products():
    class Wrapped(torch.Tensor):
        pass
    layer, x = layer_and_input()
    with torch.no_grad():
        assert layer._joined_projection(x.as_subclass(Wrapped)) is None


def test_moving_the_module_drops_what_it_kept():
    """`.to`, `.cpu`, `.half`: nothing derived from the old parameters stays behind (on the old device)."""
    layer, x = layer_and_input()
    with torch.no_grad():
        layer.project(x)
        assert layer.__dict__["_inference_values"]
        layer.to(torch.float64)
        assert not layer.__dict__.get("_inference_values")
        torch.testing.assert_close(layer.project(x.double())[0], layer.q_proj(x.double()))
