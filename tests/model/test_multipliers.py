"""Each µP multiplier changes the output exactly as falcon-h1.md's formula says.

Most are checked by an equivalent re-parametrisation: a multiplier on a linear's input or output equals
that linear with scaled weights (biases off where the formula puts the multiplier before the bias)."""

import pytest
import torch

from hybridcore.model import build_model
from hybridcore.model.layers import build_layer

from .conftest import tiny_config
from .test_model import randomised

NO_BIAS = dict(attention_bias=False, mamba_proj_bias=False, projectors_bias=False, mlp_bias=False)


def layer_pair(kind, changes, **config):
    """The same random layer built twice: once with the multiplier, once plain (copied weights)."""
    base = tiny_config(**config)
    plain = randomised(build_layer(kind, base).double())
    scaled = build_layer(kind, base.replace(**changes)).double()
    scaled.load_state_dict(plain.state_dict())
    return plain, scaled


def run_layer(layer, h, seq_len=13):
    model = build_model(tiny_config(), dtype=torch.float64)
    return layer(h, model.layer_inputs(h))


@pytest.fixture
def h():
    torch.manual_seed(0)
    return torch.randn(2, 13, 32, dtype=torch.float64)


def branch(layer, h):
    return run_layer(layer, h) - h


def test_ssm_out_scales_the_mamba_branch_linearly(h):
    results = {}
    for value in (0.0, 1.0, 2.0):
        _, layer = layer_pair("P", dict(ssm_out_multiplier=value))
        results[value] = branch(layer, h)
    mamba_branch = results[1.0] - results[0.0]
    assert mamba_branch.abs().max() > 1e-3
    torch.testing.assert_close(results[2.0] - results[0.0], 2 * mamba_branch)


def test_attention_out_scales_the_attention_branch_linearly(h):
    results = {}
    for value in (0.0, 1.0, 3.0):
        _, layer = layer_pair("P", dict(attention_out_multiplier=value))
        results[value] = branch(layer, h)
    attention_branch = results[1.0] - results[0.0]
    torch.testing.assert_close(results[3.0] - results[0.0], 3 * attention_branch)


@pytest.mark.parametrize("field, linears", [
    ("attention_in_multiplier", ["attention.q_proj", "attention.k_proj", "attention.v_proj"]),
    ("ssm_in_multiplier", ["mamba.in_proj"]),
    ("key_multiplier", ["attention.k_proj"]),
])
def test_input_multipliers_equal_scaled_weights(h, field, linears):
    plain, scaled = layer_pair("P", {field: 1.7}, **NO_BIAS)
    with torch.no_grad():
        for name in linears:
            for weight in plain.get_submodule(name).parameters():
                if weight.ndim == 2:
                    weight.mul_(1.7)
    torch.testing.assert_close(run_layer(scaled, h), run_layer(plain, h))


@pytest.mark.parametrize("segment", range(5))
def test_each_ssm_multiplier_scales_its_in_proj_segment(h, segment):
    multipliers = [1.0] * 5
    multipliers[segment] = 0.6
    plain, scaled = layer_pair("M", dict(ssm_multipliers=tuple(multipliers)), **NO_BIAS)
    with torch.no_grad():
        plain.mamba.in_proj.weights()[segment].mul_(0.6)
    torch.testing.assert_close(run_layer(scaled, h), run_layer(plain, h))


def test_mlp_multipliers(h):
    plain, scaled = layer_pair("-", dict(mlp_multipliers=(1.5, 1.0)), **NO_BIAS)
    with torch.no_grad():
        plain.mlp.gate_proj.weight.mul_(1.5)
    torch.testing.assert_close(run_layer(scaled, h), run_layer(plain, h))
    _, down = layer_pair("-", dict(mlp_multipliers=(1.0, 2.5)))
    plain_branch = branch(layer_pair("-", {})[0], h)
    torch.testing.assert_close(branch(down, h), 2.5 * plain_branch)


def test_embedding_and_lm_head_multipliers():
    torch.manual_seed(0)
    base = tiny_config(layout="M")
    ids = torch.randint(0, 61, (2, 9))
    model = randomised(build_model(base, dtype=torch.float64))
    seen = []
    model.layers["0"].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    logits = model(ids)
    model.config = base.replace(embedding_multiplier=3.0, lm_head_multiplier=0.25)
    scaled_logits = model(ids)
    torch.testing.assert_close(seen[1], 3.0 * seen[0])
    unscaled_head = model.lm_head(model.hidden_states(ids))
    torch.testing.assert_close(scaled_logits, 0.25 * unscaled_head)
    assert not torch.allclose(scaled_logits, logits)
