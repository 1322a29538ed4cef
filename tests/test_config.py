import math
import re

import pytest

from hybridcore.config import ModelConfig, coerce_field
from hybridcore.presets import get_preset


def test_round_trip_through_dict():
    config = ModelConfig(time_step_limit=(0.001, 0.1), ssm_multipliers=(1, 2, 3, 4, 5))
    again = ModelConfig.from_dict(config.to_dict())
    assert again == config
    assert again.ssm_multipliers == (1.0, 2.0, 3.0, 4.0, 5.0)


@pytest.mark.parametrize("changes, field", [
    (dict(num_heads=6, num_kv_heads=4), "num_heads"),
    (dict(head_dim=63), "head_dim"),
    (dict(mamba_n_heads=6, mamba_n_groups=4), "mamba_n_heads"),
    (dict(d_model=0), "d_model"),
    (dict(vocab_size=True), "vocab_size"),
    (dict(time_step_limit=(1.0, 0.5)), "time_step_limit"),
    (dict(mlp_multipliers=(1.0,)), "mlp_multipliers"),
    (dict(ssm_multipliers=(1.0, 1.0)), "ssm_multipliers"),
    (dict(layout="P-Q"), "position 2"),
    (dict(eos_token_id=9999), "eos_token_id"),
    (dict(rope_theta=0.0), "rope_theta"),
    (dict(norm_eps=math.nan), "norm_eps must be a finite number"),
    (dict(embedding_multiplier=math.inf), "embedding_multiplier must be a finite number"),
    (dict(ssm_multipliers=(1.0, 1.0, math.nan, 1.0, 1.0)), "ssm_multipliers must be a finite number"),
    (dict(time_step_limit=(0.0, math.nan)), "time_step_limit must be a finite number"),
    (dict(time_step_limit=(-math.inf, 1.0)), "time_step_limit must be a finite number"),
    (dict(rope_fraction=1.5), "rope_fraction"),
    (dict(head_dim=12, rope_fraction=0.25), "rope_fraction 0.25 of head_dim 12 rotates 3"),
    (dict(attention_scale=0.0), "attention_scale"),
    (dict(mlp_activation="gelu"), "mlp_activation"),
    (dict(mlp_activation="relu2", mlp_multipliers=(0.5, 1.0)), r"mlp_multipliers\[0\]"),
    (dict(logits_divisor=-1.0), "logits_divisor"),
])
def test_bad_values_name_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**changes)


def test_only_the_time_step_limit_may_be_unbounded():
    assert ModelConfig(time_step_limit=(0.0, math.inf)).time_step_limit == (0.0, math.inf)


def test_unknown_field_is_named():
    with pytest.raises(ValueError, match="unknown ModelConfig field.*d_modle"):
        ModelConfig.from_dict({"d_modle": 3})


def test_coerce_field_types():
    assert coerce_field("d_model", "128") == 128
    assert coerce_field("rope_theta", "1e11") == 1e11
    assert coerce_field("mamba_rms_norm", "true") is True
    assert coerce_field("ssm_multipliers", "1,2,3,4,5") == (1.0, 2.0, 3.0, 4.0, 5.0)
    assert coerce_field("layout", "M-") == "M-"
    assert coerce_field("time_step_limit", "0,inf") == (0.0, math.inf)
    assert coerce_field("attention_scale", "none") is None and coerce_field("attention_scale", "0.125") == 0.125
    assert coerce_field("mlp_activation", "relu2") == "relu2" and coerce_field("rope_fraction", "0.5") == 0.5
    with pytest.raises(ValueError, match="unknown model config key 'nope'"):
        coerce_field("nope", "1")
    with pytest.raises(ValueError, match="d_model"):
        coerce_field("d_model", "abc")
    with pytest.raises(ValueError, match="mamba_rms_norm"):
        coerce_field("mamba_rms_norm", "maybe")


def test_derived_shapes():
    config = ModelConfig(mamba_n_heads=24, mamba_d_head=64, mamba_d_state=128, mamba_n_groups=1, d_model=1024)
    assert config.d_ssm == 1536
    assert config.mamba_conv_dim == 1536 + 256
    assert config.mamba_in_proj_dim == 2 * 1536 + 256 + 24


@pytest.mark.parametrize("change, words", [
    (dict(tie_embeddings="false"), "ModelConfig.tie_embeddings must be True or False, got 'false'"),
    (dict(attention_bias=1), "ModelConfig.attention_bias must be True or False"),
    (dict(rope_theta="1e4"), "ModelConfig.rope_theta must be a number, got '1e4'"),
    (dict(eos_token_id=1.5), "ModelConfig.eos_token_id must be an integer"),
    (dict(eos_token_id=True), "ModelConfig.eos_token_id must be an integer"),
    (dict(init_std=-1.0), "ModelConfig.init_std must be positive"),
    (dict(time_step_limit=(-5.0, -1.0)), "time_step_limit's low bound clamps dt"),
])
def test_fields_hold_their_types_and_ranges(change, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        get_preset("debug").replace(**change)
