"""Bamba (BambaForCausalLM, model_type bamba).

HF layer i is one mixer (attention where i is in attn_layer_indices, else Mamba-2) and one SwiGLU MLP,
each with its pre-norm: our layers 2i and 2i+1, "M-" or "*-". No multipliers. Its RoPE rotates a part of
each head: rope_parameters' partial_rotary_factor, which transformers sets to 0.5 when config.json
names none (ModelConfig.rope_fraction).
"""

from __future__ import annotations

import math

from ..config import ModelConfig
from ..io.json_codec import decode
from .config_map import _rope_theta
from .family import (PLAIN_MULTIPLIERS, Family, block_mixers, build_config, default_attention_scale, differences,
                     first_eos, gated_norm_problems, hf_reader, keep_present, linear_keys, mamba_expand_problems,
                     mamba_fields_from_hf, mamba_hf_fields, mamba_shapes, mixer_block_keys, mixer_block_problems,
                     refuse_unsupported)

# transformers' BambaConfig defaults for every key read here (tests check them against it)
HF_DEFAULTS = {
    "vocab_size": 128000, "tie_word_embeddings": False, "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_act": "silu",
    "initializer_range": 0.02, "rms_norm_eps": 1e-5, "max_position_embeddings": 262144, "attention_dropout": 0.0,
    "attn_layer_indices": None, "mamba_n_heads": 128, "mamba_d_head": "auto", "mamba_n_groups": 1,
    "mamba_d_state": 256, "mamba_d_conv": 4, "mamba_expand": 2, "mamba_chunk_size": 256, "mamba_conv_bias": True,
    "mamba_proj_bias": False, "time_step_limit": (0.0, math.inf), "attention_bias": False, "mlp_bias": False,
}
DEFAULT_PARTIAL_ROTARY_FACTOR = 0.5  # what BambaConfig puts in rope_parameters when config.json has none
UNSUPPORTED = {"hidden_act": ("silu",), "attention_dropout": (0, 0.0, None)}
_get = hf_reader(HF_DEFAULTS)


def _rope_fraction(hf: dict) -> float:
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    return float(params.get("partial_rotary_factor", DEFAULT_PARTIAL_ROTARY_FACTOR))


def model_config_from_hf(hf: dict) -> ModelConfig:
    hf = decode(hf)
    refuse_unsupported(hf, _get, UNSUPPORTED)
    hidden, heads, layers = _get(hf, "hidden_size"), _get(hf, "num_attention_heads"), _get(hf, "num_hidden_layers")
    attention = set(_get(hf, "attn_layer_indices") or ())
    if any(not isinstance(i, int) or not 0 <= i < layers for i in attention):
        raise ValueError(f"config.json: attn_layer_indices {sorted(attention)} must be layer indices below "
                         f"num_hidden_layers ({layers})")
    mamba_heads, d_head = mamba_shapes(int(_get(hf, "mamba_expand") * hidden), _get(hf, "mamba_n_heads"),
                                       _get(hf, "mamba_d_head"))
    bias = bool(_get(hf, "mamba_proj_bias"))  # the Mamba in_proj and out_proj both follow it
    return build_config(
        vocab_size=_get(hf, "vocab_size"), d_model=hidden,
        layout="".join(("*" if i in attention else "M") + "-" for i in range(layers)),
        num_heads=heads, num_kv_heads=_get(hf, "num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hidden // heads, rope_theta=_rope_theta(hf), rope_fraction=_rope_fraction(hf),
        max_seq_len=_get(hf, "max_position_embeddings"), attention_bias=bool(_get(hf, "attention_bias")),
        **mamba_fields_from_hf(hf, _get, mamba_heads, d_head, bias),
        d_ff=_get(hf, "intermediate_size"), mlp_bias=bool(_get(hf, "mlp_bias")),
        init_std=_get(hf, "initializer_range"), eos_token_id=first_eos(hf),
    )


def export_problems(config: ModelConfig) -> list[str]:
    problems = mixer_block_problems(config)
    problems += differences(config, {"mlp_activation": "swiglu"}, "its MLP is SwiGLU")
    if config.rope_fraction == 0.0:
        problems.append("rope_fraction is 0.0, needs more (Bamba's attention always rotates part of each head)")
    problems += gated_norm_problems(config, "mamba_proj_bias")
    problems += differences(config, {"norm_weight_in_fp32": False}, "its RMSNorm rounds before the weight")
    problems += differences(config, PLAIN_MULTIPLIERS, "the format has no multipliers")
    if not default_attention_scale(config):
        problems.append(f"attention_scale is {config.attention_scale!r}, needs None (scale head_dim ** -0.5)")
    return problems + mamba_expand_problems(config)


def hf_config_from_model(config: ModelConfig) -> dict:
    mixers = block_mixers(config)
    return {
        "architectures": ["BambaForCausalLM"], "model_type": "bamba",
        "vocab_size": config.vocab_size, "hidden_size": config.d_model, "num_hidden_layers": len(mixers),
        "attn_layer_indices": [i for i, kind in enumerate(mixers) if kind == "*"],
        "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim, "hidden_act": "silu", "max_position_embeddings": config.max_seq_len,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta,
                            "partial_rotary_factor": config.rope_fraction},
        "attention_bias": config.attention_bias, "attention_dropout": 0.0,
        "intermediate_size": config.d_ff, "mlp_bias": config.mlp_bias, **mamba_hf_fields(config),
        **({"eos_token_id": config.eos_token_id} if config.eos_token_id is not None else {}),
    }


def hf_to_ours(config: ModelConfig) -> dict:
    candidates, mlps = mixer_block_keys(config, "model.final_layernorm.weight", "pre_ff_layernorm")
    for hf, mlp in mlps:
        for name in ("gate_proj", "up_proj", "down_proj"):
            candidates.update(linear_keys(f"{hf}.feed_forward.{name}", f"{mlp}.mlp.{name}"))
    return keep_present(candidates, config)


FAMILY = Family(
    name="Bamba", model_type="bamba", architecture="BambaForCausalLM",
    config_from_hf=model_config_from_hf, export_problems=export_problems, hf_config=hf_config_from_model,
    key_map=hf_to_ours,
)
