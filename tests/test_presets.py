import json

import pytest
import torch

from hybridcore.model.mamba2 import SegmentedLinear

from hybridcore.cli import main
from hybridcore.config import ModelConfig
from hybridcore.flops import flops_per_token, linear_weights
from hybridcore.model import HybridLM
from hybridcore.presets import PRESETS, get_preset, preset_names

FALCON = ["falcon-h1-0.5b", "falcon-h1-1.5b-deep", "falcon-h1-7b", "falcon-h1-34b"]


def hf_parameter_count(name: str) -> int:
    """Independent expectation: transformers' own FalconH1 built from the published shape on meta."""
    transformers = pytest.importorskip("transformers")
    c = get_preset(name)
    hf_config = transformers.FalconH1Config(
        vocab_size=c.vocab_size, hidden_size=c.d_model, num_hidden_layers=c.num_layers // 2,
        num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads, head_dim=c.head_dim,
        intermediate_size=c.d_ff, mamba_d_ssm=c.d_ssm, mamba_n_heads=c.mamba_n_heads, mamba_d_head=c.mamba_d_head,
        mamba_d_state=c.mamba_d_state, mamba_n_groups=c.mamba_n_groups, mamba_d_conv=c.mamba_d_conv,
        mamba_rms_norm=c.mamba_rms_norm, mamba_conv_bias=True, mamba_proj_bias=False, projectors_bias=False,
        tie_word_embeddings=False)
    with torch.device("meta"):
        model = transformers.FalconH1ForCausalLM(hf_config)
    return sum(p.numel() for p in model.parameters())


def our_count(name: str) -> int:
    with torch.device("meta"):
        return HybridLM(get_preset(name)).num_parameters()


@pytest.mark.parametrize("name", FALCON)
def test_falcon_presets_match_transformers_parameter_count(name):
    assert our_count(name) == hf_parameter_count(name)


def test_published_sizes_are_what_the_names_say():
    # Released names round these totals: 0.52B, 1.55B, 7.59B, 33.6B.
    assert round(our_count("falcon-h1-0.5b") / 1e9, 2) == 0.52
    assert round(our_count("falcon-h1-1.5b-deep") / 1e9, 2) == 1.55
    assert round(our_count("falcon-h1-7b") / 1e9, 2) == 7.59
    assert round(our_count("falcon-h1-34b") / 1e9, 1) == 33.6


def test_every_preset_is_a_valid_config_and_data_only():
    for name in preset_names():
        config = get_preset(name)
        assert isinstance(config, ModelConfig)
        assert all(isinstance(v, (int, float, str, bool, tuple, type(None))) for v in PRESETS[name].values())
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        get_preset("nope")


def test_debug_preset_is_a_few_million_parameters():
    assert 1e6 < our_count("debug") < 1e7


def test_flops_matmul_term_counts_every_linear_weight():
    config = get_preset("falcon-h1-0.5b")
    with torch.device("meta"):
        model = HybridLM(config)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    linear += sum(w.numel() for m in model.modules() if isinstance(m, SegmentedLinear) for w in m.weights())
    assert linear_weights(config) == linear
    flops = flops_per_token(config, 4096)
    assert flops.matmul == 6 * linear
    # peers.md's convention for causal attention: 12 x layers x seq x heads x head_dim / 2 per token
    assert flops.attention == 12 * 36 * 4096 * 8 * 64 / 2
    assert flops.ssd > 0 and flops.total == flops.matmul + flops.attention + flops.ssd


def test_flops_count_a_gateless_mlp_as_two_matrices():
    config = get_preset("debug").replace(mlp_activation="relu2")
    with torch.device("meta"):
        model = HybridLM(config)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    linear += sum(w.numel() for m in model.modules() if isinstance(m, SegmentedLinear) for w in m.weights())
    assert linear_weights(config) == linear


def test_info_json_reports_exact_params(capsys):
    assert main(["info", "falcon-h1-7b", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"] == our_count("falcon-h1-7b")
    assert info["layer_counts"] == {"parallel": 44, "mamba": 0, "attention": 0, "mlp": 44}
    assert info["params_non_embedding"] == info["params"] - 130049 * 3072


def test_info_text_and_overrides(capsys):
    assert main(["info", "debug", "--set", "layout=M-M*-", "--seq-len", "512"]) == 0
    out = capsys.readouterr().out
    assert "2 mamba, 1 attention, 2 mlp" in out and "seq_len 512" in out
    assert main(["info", "debug", "--seq-len", "0"]) == 2  # not taken for "the default"
    assert "--seq-len must be positive, got 0" in capsys.readouterr().err


def test_info_shows_each_ranks_share_under_tp_and_mixer_parallelism(capsys):
    """The ranks' shares add up to the layers' FLOPs and weights; split mixer parallelism loads the Mamba-2
    half more (its branch is the larger), the interleaved variant balances the halves over the layers."""
    from hybridcore.flops import layer_flops

    config = get_preset("falcon-h1-0.5b")
    layers = sum(layer_flops(config, kind, 4096) for kind in config.layer_kinds)
    shares = {}
    # plain tp over 4 ranks would split 2 kv heads 4 ways: 2 ranks; mixer parallelism splits each branch 2 ways
    for tp, mode in (("2", []), ("4", ["--mixer-parallel"]), ("4", ["--mixer-parallel", "interleaved"])):
        assert main(["info", "falcon-h1-0.5b", "--tp", tp, "--json", *mode]) == 0
        ranks = json.loads(capsys.readouterr().out)["tensor_parallel"]["ranks"]
        assert sum(r["forward_flops_per_token"] for r in ranks) == pytest.approx(layers)
        shares[mode[-1] if mode else "tp"] = [r["forward_flops_per_token"] for r in ranks]
    assert shares["tp"] == pytest.approx([layers / 2] * 2)
    assert shares["--mixer-parallel"][0] < shares["--mixer-parallel"][2]  # attention half, Mamba-2 half
    assert shares["interleaved"] == pytest.approx([layers / 4] * 4)
    assert main(["info", "falcon-h1-0.5b", "--tp", "2", "--mixer-parallel"]) == 0
    assert "P mamba" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["info", "nope"], "unknown preset"),
    (["info", "debug", "--tp", "3", "--mixer-parallel"], "even --tp"),
    (["info", "debug", "--set", "layout=M-", "--tp", "2", "--mixer-parallel"], "has none"),
    (["info", "debug", "--set", "d_modle=3"], "unknown model config key 'd_modle'"),
    (["info", "debug", "--set", "layout=P-?"], "position 2"),
    (["info", "debug", "--set", "novalue"], "KEY=VALUE"),
])
def test_info_errors_are_clean(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_info_reads_a_hugging_face_directory(tmp_path, capsys):
    from hybridcore.bridge.config_map import hf_config_from_model

    (tmp_path / "config.json").write_text(json.dumps(hf_config_from_model(get_preset("falcon-h1-0.5b"))))
    assert main(["info", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == our_count("falcon-h1-0.5b")


def test_pipeline_split_balances_flops_and_honours_cuts(capsys):
    from hybridcore.flops import head_flops, layer_flops, pipeline_stages

    config = get_preset("debug").replace(layout="PPPP" + "-" * 12)
    stages = pipeline_stages(config, 2, 256)
    loads = [sum(layer_flops(config, config.layer_kinds[i], 256) for i in s) for s in stages]
    loads[-1] += head_flops(config)  # the last stage also runs the LM head and the loss
    assert [i for s in stages for i in s] == list(range(16))
    assert max(loads) / min(loads) < 1.6  # a by-count split (8 | 8) would be about 3 : 1
    assert pipeline_stages(config.replace(layout="P-|P-|--"), 3, 256) == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(ValueError, match="2 stages"):
        pipeline_stages(config.replace(layout="P-|P-"), 4, 256)
    assert main(["info", "falcon-h1-0.5b", "--pp", "4"]) == 0
    shares = [float(line.rsplit("%", 1)[0].rsplit(" ", 1)[-1]) for line in capsys.readouterr().out.splitlines()
              if line.startswith("stage")]
    assert len(shares) == 4 and max(shares) - min(shares) < 2.0  # the head counted: stages within 2 points


# nvidia/Nemotron-H-8B-Base-8K's public config.json (its numerics-relevant fields, as released)
NEMOTRON_H_8B = {
    "model_type": "nemotron_h", "architectures": ["NemotronHForCausalLM"], "vocab_size": 131072, "hidden_size": 4096,
    "hybrid_override_pattern": "M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-", "num_hidden_layers": 52,
    "num_attention_heads": 32, "num_key_value_heads": 8, "attention_head_dim": 128, "attention_bias": False,
    "attention_dropout": 0.0, "max_position_embeddings": 8192, "intermediate_size": 21504, "mlp_hidden_act": "relu2",
    "mlp_bias": False, "ssm_state_size": 128, "mamba_num_heads": 128, "mamba_head_dim": 64, "mamba_hidden_act": "silu",
    "n_groups": 8, "conv_kernel": 4, "chunk_size": 128, "expand": 2, "use_conv_bias": True, "use_bias": False,
    "mamba_proj_bias": False, "layer_norm_epsilon": 1e-05, "rms_norm_eps": 1e-05, "residual_in_fp32": False,
    "tie_word_embeddings": False, "initializer_range": 0.02, "eos_token_id": 2,
}


def test_nemotron_preset_is_the_released_config_and_counts_as_transformers():
    from hybridcore.bridge.families import model_config_from_hf

    transformers = pytest.importorskip("transformers")
    assert model_config_from_hf(NEMOTRON_H_8B) == get_preset("nemotron-h-8b")
    with torch.device("meta"):
        theirs = transformers.NemotronHForCausalLM(transformers.NemotronHConfig(**NEMOTRON_H_8B))
    assert our_count("nemotron-h-8b") == sum(p.numel() for p in theirs.parameters())
    assert round(our_count("nemotron-h-8b") / 1e9, 1) == 8.1
