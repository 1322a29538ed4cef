"""Nemotron-H, Granite-4.0-H (dense) and Bamba through the bridge: logits equal transformers', the round
trip HF -> hybridcore -> HF is bit-identical, and what a family cannot express is refused by name."""

import dataclasses
import json

import pytest
import torch

from hybridcore.bridge import load_hf, save_hf
from hybridcore.bridge import bamba, granite, nemotron_h
from hybridcore.cli import main

from .conftest import assert_same_logits
from .family_cases import BASES, CASES, classes, load_with_transformers, random_model, save_case
from .helpers import edit_single_file, listing, read_all

transformers = pytest.importorskip("transformers")

FAMILY_NAMES = {"nemotron_h": "Nemotron-H", "granitemoehybrid": "Granite-4.0-H", "bamba": "Bamba"}
ROUND_TRIP = ["nemotron_h/relu2-8groups-gqa-biases-conv3", "granite/rope-multipliers-tied-biases-1group",
              "bamba/default-partial-rope-biases-untied-1group"]


@pytest.mark.parametrize("name", CASES)
def test_logits_match_transformers(tmp_path, name):
    model_type, changes = CASES[name]
    reference = save_case(tmp_path, name)
    ours = load_hf(str(tmp_path))
    assert ours.config.layout == ("M*-M-" if "hybrid_override_pattern" in changes else "M-*-M-")
    assert ours.config.tie_embeddings == bool(changes.get("tie_word_embeddings",
                                                          model_type == "granitemoehybrid"))
    assert_same_logits(reference, ours)


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_round_trip_is_bit_identical_and_loads_in_transformers(tmp_path, name):
    model_type, _ = CASES[name]
    reference = save_case(tmp_path / "hf", name)
    family = save_hf(load_hf(str(tmp_path / "hf")), str(tmp_path / "out"))
    assert family.model_type == model_type  # the family the layout and switches fit
    original, exported = read_all(tmp_path / "hf"), read_all(tmp_path / "out")
    assert sorted(exported) == sorted(original)
    for key, tensor in original.items():
        assert exported[key].dtype == tensor.dtype and torch.equal(exported[key], tensor), key
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == model_type
    assert_same_logits(reference, load_with_transformers(tmp_path / "out", model_type))


def test_a_cross_family_export_is_refused_and_writes_nothing(tmp_path):
    save_case(tmp_path / "hf", "nemotron_h/relu2-8groups-gqa-biases-conv3")
    model = load_hf(str(tmp_path / "hf"))
    with pytest.raises(ValueError, match=r"cannot export as Falcon-H1: layout 'M-\*-M-' cannot be exported.*"
                                         r"mlp_activation is 'relu2', needs 'swiglu'"):
        save_hf(model, str(tmp_path / "out"), family="falcon_h1")
    with pytest.raises(ValueError, match=r"cannot export as Granite-4.0-H: mlp_activation is 'relu2', needs 'swiglu'"):
        save_hf(model, str(tmp_path / "out"), family="Granite-4.0-H")
    assert listing(tmp_path) == ["hf"]


def test_nemotron_checkpoints_under_model_prefix_and_with_mtp_weights_load(tmp_path):
    reference = save_case(tmp_path, "nemotron_h/relu2-8groups-gqa-biases-conv3")
    edit_single_file(tmp_path, lambda t: {**{k.replace("backbone.", "model.", 1): v for k, v in t.items()},
                                          "mtp.layers.0.norm.weight": torch.ones(32)})
    assert_same_logits(reference, load_hf(str(tmp_path)))


def test_released_spellings_of_nemotron_h_are_read(tmp_path):
    """The released configs: attention_head_dim, older mamba_* names, use_bias for both Mamba projections."""
    config = nemotron_h.model_config_from_hf({
        "model_type": "nemotron_h", "hybrid_override_pattern": "M-M*-", "hidden_size": 64, "attention_head_dim": 16,
        "num_attention_heads": 4, "num_key_value_heads": None, "mamba_n_groups": 2, "n_groups": 8,
        "mamba_d_conv": 2, "mamba_dt_limit": [0.0, {"__float__": "Infinity"}], "use_bias": True,
        "mamba_num_heads": 4, "mamba_head_dim": 8, "eos_token_id": [11, 2]})
    assert (config.layout, config.head_dim, config.num_kv_heads, config.mamba_n_groups) == ("M-M*-", 16, 4, 2)
    assert config.mamba_d_conv == 2 and config.time_step_limit == (0.0, float("inf")) and config.eos_token_id == 11
    assert config.mamba_proj_bias and config.projectors_bias and config.rope_fraction == 0.0


@pytest.mark.parametrize("module, class_name", [(nemotron_h, "NemotronHConfig"), (granite, "GraniteMoeHybridConfig"),
                                                (bamba, "BambaConfig")])
def test_defaults_are_transformers_defaults(module, class_name):
    defaults = {f.name: f.default for f in dataclasses.fields(getattr(transformers, class_name))}
    for key, value in module.HF_DEFAULTS.items():
        assert defaults[key] == value, key


REFUSALS = {
    "nemotron-moe": ({"model_type": "nemotron_h", "layers_block_type": ["linear_attention", "moe"]},
                     r"layers_block_type\[1\] is 'moe', a mixture-of-experts block"),
    "nemotron-moe-pattern": ({"model_type": "nemotron_h", "hybrid_override_pattern": "ME*"},
                             r"hybrid_override_pattern\[1\] is 'E'"),
    "nemotron-gelu": ({"model_type": "nemotron_h", "hybrid_override_pattern": "M-", "mlp_hidden_act": "gelu"},
                      r"mlp_hidden_act='gelu' is not supported"),
    "granite-moe": ({"model_type": "granitemoehybrid"}, r"num_local_experts is 8: mixture-of-experts"),
    "granite-rope-kind": ({"model_type": "granitemoehybrid", "num_local_experts": 0,
                           "position_embedding_type": "alibi"}, r"position_embedding_type='alibi'"),
    "bamba-indices": ({"model_type": "bamba", "num_hidden_layers": 2, "attn_layer_indices": [5]},
                      r"attn_layer_indices \[5\]"),
    "zamba2": ({"model_type": "zamba2"}, r"model_type 'zamba2' is not supported: layers_block_type names "
                                         r"'hybrid' layers, which share one attention block"),
    "jamba": ({"model_type": "jamba"}, r"'jamba' is not supported: .*Mamba-1.*num_experts"),
}


@pytest.mark.parametrize("config, message", REFUSALS.values(), ids=REFUSALS.keys())
def test_what_the_grammar_cannot_express_is_refused_by_field(tmp_path, capsys, config, message):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        load_hf(str(tmp_path / "hf"))
    assert main(["info", str(tmp_path / "hf")]) == 2
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "out")]) == 2
    assert "error:" in capsys.readouterr().err and listing(tmp_path) == ["hf"]


def test_import_export_and_info_from_the_command_line(tmp_path, capsys):
    name = "granite/rope-multipliers-tied-biases-1group"
    reference = save_case(tmp_path / "hf", name)
    assert main(["info", str(tmp_path / "hf"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layout"] == "M-*-M-" and info["params"] == sum(p.numel() for p in reference.parameters())
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "model")]) == 0
    assert "Granite-4.0-H" in capsys.readouterr().out
    assert main(["export-hf", str(tmp_path / "model"), str(tmp_path / "out"), "--family", "bamba"]) == 2
    assert "cannot export as Bamba: " in capsys.readouterr().err
    assert main(["export-hf", str(tmp_path / "model"), str(tmp_path / "out")]) == 0
    assert "Granite-4.0-H (GraniteMoeHybridForCausalLM)" in capsys.readouterr().out
    assert_same_logits(reference, load_with_transformers(tmp_path / "out", "granitemoehybrid"))


@torch.no_grad()
def test_nemotron_norms_round_as_transformers_in_bf16(tmp_path):
    """fp32 parity cannot see where a norm rounds; bf16 can: our norms are transformers' bit for bit."""
    reference = random_model("nemotron_h", {}).to(torch.bfloat16)
    reference.save_pretrained(str(tmp_path))
    ours = load_hf(str(tmp_path))
    theirs_norm, our_norm = reference.model.layers[1].norm, ours.layers["1"].norm
    x = torch.randn(4, 7, 32).to(torch.bfloat16)
    normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5)
    theirs = theirs_norm(x)
    if torch.equal(theirs, theirs_norm.weight * normed.to(torch.bfloat16)):
        pytest.skip(f"transformers {transformers.__version__} rounds Nemotron-H's norm before its weight")
    assert torch.equal(our_norm(x), theirs)
    assert torch.equal(ours.final_norm(x), reference.model.norm_f(x))


def test_every_case_checks_a_distinct_switch():
    """The cases together cover each switch both ways (a guard against a table edit dropping one)."""
    from hybridcore.bridge.families import model_config_from_hf

    configs = []
    for model_type, changes in CASES.values():
        configs.append(model_config_from_hf(classes(model_type)[0](**{**BASES[model_type], **changes}).to_dict()))
    seen = lambda field: {getattr(c, field) for c in configs}  # noqa: E731
    assert seen("mlp_activation") == {"swiglu", "relu2"} and seen("rope_fraction") == {0.0, 0.25, 0.5, 1.0}
    assert {c.mamba_n_groups > 1 for c in configs} == {True, False} and seen("tie_embeddings") == {True, False}
    assert seen("attention_bias") == {True, False} and seen("mamba_proj_bias") == {True, False}
    assert any(c.attention_scale not in (None, c.head_dim ** -0.5) for c in configs)
    assert any(c.logits_divisor != 1.0 and c.embedding_multiplier != 1.0 for c in configs)


@pytest.fixture(scope="module")
def byte_data(tmp_path_factory):
    from hybridcore.data import prepare

    root = tmp_path_factory.mktemp("family-data")
    (root / "corpus").mkdir()
    for i in range(8):
        (root / "corpus" / f"doc{i}.txt").write_text(f"document {i}: " + "state space and attention " * (4 + i))
    prepare([root / "corpus"], root / "data", val_fraction=0.2, seed=0, workers=1, progress=False)
    return root / "data"


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_import_train_and_export_give_transformers_our_logits(tmp_path, byte_data, capsys, name):
    """The whole path: a family's checkpoint trains here (--init-hf) and exports in its own format."""
    from hybridcore.train import TrainConfig, train
    from hybridcore.train.checkpoint import load_model

    model_type, changes = CASES[name]
    random_model(model_type, {**changes, "vocab_size": 258, "eos_token_id": 256}).save_pretrained(str(tmp_path / "hf"))
    train(TrainConfig(out=str(tmp_path / "run"), init_hf=str(tmp_path / "hf"), data=str(byte_data), steps=2,
                      batch_size=2, seq_len=40, warmup=1, save_every=0, eval_every=0, progress=False, sample_tokens=0,
                      device="cpu"))
    assert main(["export-hf", str(tmp_path / "run"), str(tmp_path / "out")]) == 0
    assert FAMILY_NAMES[model_type] in capsys.readouterr().out
    trained = load_model(tmp_path / "run")
    before = load_hf(str(tmp_path / "hf"))
    assert not torch.equal(trained.embed.weight, before.embed.weight)  # training moved the weights
    ids = torch.randint(0, 258, (2, 37), generator=torch.Generator().manual_seed(0))
    assert_same_logits(load_with_transformers(tmp_path / "out", model_type), trained, ids)
