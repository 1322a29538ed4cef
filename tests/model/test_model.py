import pytest
import torch

from hybridcore.model import HybridLM, build_model, positions_from_seq_idx
from hybridcore.model.layers import LayerInputs, build_layer
from hybridcore.model.rope import rope_cos_sin

from .conftest import tiny_config

LAYOUTS = ["P", "M", "*", "-", "P-M*-"]


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random, so no init value (ones, zeros) hides a mistake."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.3 + (0.8 if p.ndim == 1 else 0))
    return model


def model_for(layout, **changes):
    return randomised(build_model(tiny_config(layout=layout, **changes), dtype=torch.float64))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_causal_changing_token_t_changes_nothing_before_t(layout):
    model = model_for(layout)
    ids = torch.randint(0, 61, (2, 21))
    t = 13
    changed = ids.clone()
    changed[:, t] = (ids[:, t] + 7) % 61
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert torch.equal(a[:, :t], b[:, :t])
    assert (a[:, t] - b[:, t]).abs().max() > 1e-6  # and the change does reach token t


@pytest.mark.parametrize("layout", LAYOUTS)
def test_packed_documents_equal_separate_runs(layout):
    model = model_for(layout)
    lengths = [5, 11, 9]  # document borders fall inside and across SSD chunks of 8
    docs = [torch.randint(0, 61, (1, n)) for n in lengths]
    seq_idx = torch.cat([torch.full((1, n), i) for i, n in enumerate(lengths)], dim=1)
    with torch.no_grad():
        packed = model(torch.cat(docs, dim=1), seq_idx=seq_idx)
        separate = torch.cat([model(d) for d in docs], dim=1)
    torch.testing.assert_close(packed, separate, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("layout", ["*", "P-M*-"])
def test_long_sequence_document_attention_needs_no_mask_and_agrees(layout, monkeypatch):
    """Above DOCUMENT_MASK_LIMIT attention runs document by document; logits and gradients are the
    mask path's (rows with different borders, a document spanning a whole row, one-token documents)."""
    from hybridcore.model import attention

    model = model_for(layout)
    ids = torch.randint(0, 61, (3, 26))
    seq_idx = torch.zeros(3, 26, dtype=torch.long)
    seq_idx[0, 4:], seq_idx[0, 5:], seq_idx[0, 17:] = 1, 2, 3
    seq_idx[2, 25:] = 1
    results = []
    for limit in (10 ** 9, 0):
        monkeypatch.setattr(attention, "DOCUMENT_MASK_LIMIT", limit)
        model.zero_grad()
        logits = model(ids, seq_idx=seq_idx)
        logits.pow(2).mean().backward()
        results.append((logits.detach(), [p.grad.clone() for p in model.parameters()]))
    (mask_logits, mask_grads), (run_logits, run_grads) = results
    torch.testing.assert_close(run_logits, mask_logits, rtol=1e-10, atol=1e-10)
    for a, b in zip(run_grads, mask_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_a_model_part_holds_build_models_values_for_the_kept_modules():
    """A pipeline rank materialises only its modules; the random stream is drawn as for the whole model."""
    from hybridcore.model import build_model_part

    config = tiny_config(layout="P-M*-")
    full = build_model(config, seed=3).state_dict()

    def keep(name):
        return name.split(".")[:2] in (["layers", "2"], ["layers", "3"]) or name == "lm_head"

    part = build_model_part(config, keep, seed=3).state_dict()
    real = {key for key, tensor in part.items() if not tensor.is_meta}
    assert real == {key for key in full if key.startswith(("layers.2.", "layers.3.", "lm_head."))}
    assert all(torch.equal(part[key], full[key]) for key in real)
    with pytest.raises(ValueError, match="tied embeddings"):
        build_model_part(tiny_config(layout="P-", tie_embeddings=True), keep)


def test_positions_restart_per_document():
    seq_idx = torch.tensor([[0, 0, 1, 1, 1, 2], [0, 0, 0, 0, 0, 0]])
    assert positions_from_seq_idx(seq_idx).tolist() == [[0, 1, 0, 1, 2, 0], [0, 1, 2, 3, 4, 5]]


def test_meta_build_and_seeded_init():
    config = tiny_config(layout="P-M")
    with torch.device("meta"):
        meta_model = HybridLM(config)
    assert all(p.is_meta for p in meta_model.parameters())
    a, b = build_model(config, seed=3), build_model(config, seed=3)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name
        assert torch.isfinite(pa).all(), name
    mixer = a.layers["0"].mamba
    assert torch.allclose(mixer.A_log, torch.log(torch.arange(1.0, 5.0)))
    assert torch.equal(mixer.D, torch.ones(4)) and torch.equal(mixer.dt_bias, torch.ones(4))
    assert not torch.equal(build_model(config, seed=4).embed.weight, a.embed.weight)


def test_tied_embeddings_share_one_tensor():
    tied = build_model(tiny_config(tie_embeddings=True))
    untied = build_model(tiny_config(tie_embeddings=False))
    assert tied.lm_head.weight is tied.embed.weight
    assert untied.num_parameters() - tied.num_parameters() == 61 * 32
    assert "lm_head.weight" not in dict(tied.named_parameters())


def test_multipliers_are_not_parameters_or_state():
    model = build_model(tiny_config(ssm_multipliers=(2, 3, 4, 5, 6), key_multiplier=3.0))
    names = set(model.state_dict())
    assert not any("mup" in n or "multiplier" in n for n in names)
    assert len(names) == len(list(model.named_parameters()))


def test_bf16_forward_runs_and_stays_close_to_fp32():
    model = build_model(tiny_config(layout="P-M*-"), seed=1)
    ids = torch.randint(0, 61, (2, 19))
    with torch.no_grad():
        full = model(ids)
        half = model.to(torch.bfloat16)(ids).float()
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    assert (half - full).abs().max() < 0.05 * full.abs().max()


def test_rope_cos_sin_fp32_at_huge_theta():
    cos, sin = rope_cos_sin(torch.arange(5)[None], 8, 1e11)
    assert cos.dtype == torch.float32
    torch.testing.assert_close(cos ** 2 + sin ** 2, torch.ones_like(cos))
    assert torch.allclose(cos[0, 0], torch.ones(8))  # position 0 is the identity


def test_layer_classes_match_grammar():
    config = tiny_config(layout="PM*-")
    kinds = [layer.kind for layer in HybridLM(config).layers.values()]
    assert kinds == ["P", "M", "*", "-"]
    with pytest.raises(KeyError):
        build_layer("?", config)


def test_layer_inputs_shapes():
    model = build_model(tiny_config())
    inputs = model.layer_inputs(torch.zeros(2, 7, 32))
    assert isinstance(inputs, LayerInputs) and inputs.cos.shape == (2, 7, 8)
