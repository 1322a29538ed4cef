"""The switches other families need, each against the formula it stands for (the families' parity with
transformers is in tests/bridge/test_families.py)."""

import pytest
import torch
import torch.nn.functional as F

from hybridcore.model import build_model
from hybridcore.model.attention import Attention
from hybridcore.model.mlp import SquaredReLUMLP
from hybridcore.model.norm import RMSNorm
from hybridcore.model.rope import apply_rope, rope_cos_sin

from .conftest import tiny_config
from .test_model import randomised


def ids(length=13):
    return torch.randint(0, 61, (2, length), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("fraction, moves", [(1.0, True), (0.5, True), (0.0, False)])
def test_logits_depend_on_positions_only_through_rope(fraction, moves):
    model = randomised(build_model(tiny_config(layout="*-", rope_fraction=fraction), dtype=torch.float64))
    tokens = ids()
    spread = torch.arange(tokens.shape[1])[None].expand(2, -1) * 3  # RoPE is relative: a shift would not show
    with torch.no_grad():
        difference = (model(tokens) - model(tokens, positions=spread)).abs().max().item()
    assert difference > 1e-3 if moves else difference == 0.0, difference


def test_partial_rope_rotates_the_leading_channels_at_their_own_frequencies():
    x = torch.randn(2, 5, 3, 8, dtype=torch.float64)
    positions = torch.arange(5)[None].expand(2, -1)
    cos, sin = rope_cos_sin(positions, 4, 1e4)
    out = apply_rope(x, cos, sin)
    assert torch.equal(out[..., 4:], x[..., 4:])  # the rest passes untouched
    assert torch.equal(out[..., :4], apply_rope(x[..., :4].contiguous(), cos, sin))
    # frequencies over the rotated width: theta ** (-2i / 4), not ** (-2i / 8)
    angle = positions[0, 1].item() * 1e4 ** (-2 / 4)
    assert cos[0, 1, 1].item() == pytest.approx(torch.tensor(angle, dtype=torch.float32).cos().item(), abs=1e-6)
    empty_cos, _ = rope_cos_sin(positions, 0, 1e4)
    assert empty_cos.shape == (2, 5, 0) and torch.equal(apply_rope(x, empty_cos, empty_cos), x)


def test_attention_scale_is_the_softmax_scale():
    config = tiny_config(layout="*-", attention_scale=0.3, rope_fraction=0.0, attention_bias=False, num_kv_heads=4)
    attention = randomised(Attention(config).double())
    x = torch.randn(1, 6, 32, dtype=torch.float64)
    model = build_model(config, dtype=torch.float64)
    got = attention(x, model.layer_inputs(ids(6)[:1]))
    projections = (attention.q_proj, attention.k_proj, attention.v_proj)
    q, k, v = (proj(x).view(1, 6, 4, 8).transpose(1, 2) for proj in projections)
    scores = q @ k.transpose(-1, -2) * 0.3 + torch.full((6, 6), float("-inf"), dtype=torch.float64).triu(1)
    want = attention.o_proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(1, 6, 32))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_logits_divisor_divides_logits_and_the_fused_loss():
    plain = randomised(build_model(tiny_config(lm_head_multiplier=0.7), dtype=torch.float64))
    divided = build_model(tiny_config(lm_head_multiplier=0.7, logits_divisor=2.5), dtype=torch.float64)
    divided.load_state_dict(plain.state_dict())
    tokens = ids()
    with torch.no_grad():
        torch.testing.assert_close(divided(tokens), plain(tokens) / 2.5, rtol=1e-12, atol=1e-12)
        logits = plain(tokens)[:, :-1] / 2.5
        want = F.cross_entropy(logits.reshape(-1, 61), tokens[:, 1:].reshape(-1))
        labels = torch.cat([tokens[:, 1:], torch.full((2, 1), -100)], dim=1)
        torch.testing.assert_close(divided(tokens, labels=labels), want, rtol=1e-10, atol=1e-10)


def test_squared_relu_mlp_has_no_gate():
    config = tiny_config(layout="M-", mlp_activation="relu2", mlp_multipliers=(1.0, 0.6))
    mlp = randomised(SquaredReLUMLP(config).double())
    assert sorted(name for name, _ in mlp.named_parameters()) == ["down_proj.bias", "down_proj.weight",
                                                                   "up_proj.bias", "up_proj.weight"]
    assert set(dict(mlp.named_parameters())) <= set(mlp.parallel_plan)
    x = torch.randn(3, 32, dtype=torch.float64)
    want = mlp.down_proj(F.relu(mlp.up_proj(x)) ** 2) * 0.6
    torch.testing.assert_close(mlp(x), want, rtol=1e-12, atol=1e-12)
    model = build_model(config)
    assert not any("gate_proj" in name for name, _ in model.named_parameters())


def test_norm_weight_in_fp32_rounds_once_after_the_weight():
    torch.manual_seed(0)
    x = torch.randn(64, 32).to(torch.bfloat16)
    weight = (1.0 + 0.5 * torch.randn(32)).to(torch.bfloat16)
    norms = {}
    for in_fp32 in (False, True):
        norm = RMSNorm(32, 1e-5, weight_in_fp32=in_fp32).to(torch.bfloat16)
        with torch.no_grad():
            norm.weight.copy_(weight)
        norms[in_fp32] = norm(x)
    normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5)
    assert torch.equal(norms[True], (weight.float() * normed).to(torch.bfloat16))
    assert torch.equal(norms[False], weight * normed.to(torch.bfloat16))
    assert not torch.equal(norms[True], norms[False])  # in bf16 the order shows
