"""config.json <-> ModelConfig: transformers' defaults, legacy RoPE keys, non-finite floats."""

import dataclasses
import json
import math

import pytest

from hybridcore.bridge import save_hf
from hybridcore.bridge.config_map import HF_DEFAULTS, hf_config_from_model, model_config_from_hf
from hybridcore.model import build_model
from hybridcore.presets import get_preset

from .conftest import tiny_model_config

transformers = pytest.importorskip("transformers")


def test_defaults_are_transformers_defaults():
    defaults = {f.name: f.default for f in dataclasses.fields(transformers.FalconH1Config)}
    for key, value in HF_DEFAULTS.items():
        assert defaults[key] == value, key


def test_a_bare_config_json_means_what_transformers_builds():
    bare = model_config_from_hf({"model_type": "falcon_h1"})
    full = model_config_from_hf(transformers.FalconH1Config().to_dict())
    assert bare.replace(eos_token_id=2) == full
    assert (bare.d_model, bare.d_ssm, bare.mamba_d_head, bare.rope_theta) == (4096, 1024, 8, 10000.0)


def test_legacy_and_null_fields():
    legacy = {"model_type": "falcon_h1", "hidden_size": 64, "num_attention_heads": 4, "rope_theta": 1e11,
              "rope_scaling": None, "mamba_d_ssm": None, "mamba_expand": 2, "mamba_n_heads": 8,
              "num_key_value_heads": None, "time_step_limit": [0.0, {"__float__": "Infinity"}],
              "eos_token_id": [11, 12]}
    config = model_config_from_hf(legacy)
    assert config.rope_theta == 1e11 and config.d_ssm == 128 and config.mamba_d_head == 16
    assert config.num_kv_heads == 4 and config.time_step_limit == (0.0, math.inf) and config.eos_token_id == 11


@pytest.mark.parametrize("name", ["falcon-h1-0.5b", "falcon-h1-1.5b-deep", "falcon-h1-7b", "falcon-h1-34b"])
def test_presets_survive_the_round_trip(name):
    preset = get_preset(name)
    assert model_config_from_hf(hf_config_from_model(preset)) == preset


def test_written_config_is_strict_json_that_transformers_reads(tmp_path):
    config = tiny_model_config(time_step_limit=(0.001, math.inf), key_multiplier=0.25, eos_token_id=7)
    save_hf(build_model(config), str(tmp_path / "out"))
    text = (tmp_path / "out" / "config.json").read_text()
    json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    theirs = transformers.FalconH1Config.from_pretrained(str(tmp_path / "out"))
    assert tuple(theirs.time_step_limit) == (0.001, math.inf)
    assert theirs.rope_parameters["rope_theta"] == 1e4 and theirs.key_multiplier == 0.25
    assert model_config_from_hf(theirs.to_dict()) == config
