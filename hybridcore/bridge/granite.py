"""Granite-4.0-H, the dense releases (GraniteMoeHybridForCausalLM with num_local_experts 0, model_type
granitemoehybrid).

HF layer i is one mixer (Mamba-2 or attention, `layer_types`) and one SwiGLU MLP ("shared_mlp"), each
with its pre-norm: our layers 2i and 2i+1, "M-" or "*-". Its multipliers map onto ModelConfig's:
    embedding_multiplier    embedding_multiplier
    residual_multiplier     every branch's output multiplier (attention_out, ssm_out, mlp down), which is
                            where it applies: h + branch(norm(h)) * residual_multiplier
    attention_multiplier    attention_scale (the softmax scale, in place of head_dim ** -0.5)
    logits_scaling          logits_divisor
RoPE is on with position_embedding_type "rope" and off otherwise ("nope"). The MLP's input_linear holds
the gate and up projections stacked. Routed experts (num_local_experts > 0) are refused.
"""

from __future__ import annotations

import math

from ..config import ModelConfig
from ..io.json_codec import decode
from .config_map import _rope_theta
from .family import (ATTENTION_TYPES, MAMBA_TYPES, Family, block_mixers, build_config, default_attention_scale,
                     differences, first_eos, gated_norm_problems, hf_reader, keep_present, mamba_expand_problems,
                     mamba_fields_from_hf, mamba_hf_fields, mamba_shapes, mixer_block_keys, mixer_block_problems,
                     mixer_per_block, refuse_unsupported)

# transformers' GraniteMoeHybridConfig defaults for every key read here (tests check them against it)
HF_DEFAULTS = {
    "vocab_size": 32000, "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": None, "hidden_act": "silu", "max_position_embeddings": 2048, "initializer_range": 0.02,
    "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "attention_bias": False, "attention_dropout": 0.0,
    "embedding_multiplier": 1.0, "logits_scaling": 1.0, "residual_multiplier": 1.0, "attention_multiplier": 1.0,
    "num_local_experts": 8, "shared_intermediate_size": 1024, "position_embedding_type": None,
    "layer_types": None, "mamba_n_heads": 128, "mamba_n_groups": 1, "mamba_d_state": 256, "mamba_d_head": "auto",
    "mamba_d_conv": 4, "mamba_expand": 2, "mamba_chunk_size": 256, "mamba_conv_bias": True,
    "mamba_proj_bias": False, "time_step_limit": (0.0, math.inf),
}
UNSUPPORTED = {"hidden_act": ("silu",), "attention_dropout": (0, 0.0, None),
               "position_embedding_type": (None, "nope", "rope")}
_get = hf_reader(HF_DEFAULTS, {"layers_block_type": "layer_types"})


def _multiplier(hf: dict, key: str) -> float:
    value = _get(hf, key)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"config.json: {key} must be a number, got {value!r}")
    return float(value)


def model_config_from_hf(hf: dict) -> ModelConfig:
    hf = decode(hf)
    refuse_unsupported(hf, _get, UNSUPPORTED)
    experts = _get(hf, "num_local_experts")
    if experts:
        raise ValueError(f"config.json: num_local_experts is {experts}: mixture-of-experts Granite models are not "
                         f"supported (hybridcore's MLPs are dense; the dense releases have num_local_experts 0)")
    hidden, heads, layers = _get(hf, "hidden_size"), _get(hf, "num_attention_heads"), _get(hf, "num_hidden_layers")
    types = _get(hf, "layer_types") or [MAMBA_TYPES[0]] * layers
    if len(types) != layers:
        raise ValueError(f"config.json: layer_types names {len(types)} layers, num_hidden_layers is {layers}")
    mamba_heads, d_head = mamba_shapes(int(_get(hf, "mamba_expand") * hidden), _get(hf, "mamba_n_heads"),
                                       _get(hf, "mamba_d_head"))
    residual = _multiplier(hf, "residual_multiplier")
    scale = _get(hf, "attention_multiplier")  # None: the SDPA default, head_dim ** -0.5
    bias = bool(_get(hf, "mamba_proj_bias"))  # the Mamba in_proj and out_proj both follow it
    return build_config(
        vocab_size=_get(hf, "vocab_size"), d_model=hidden,
        layout="".join(kind + "-" for kind in mixer_per_block(types, "layer_types")),
        num_heads=heads, num_kv_heads=_get(hf, "num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hidden // heads,
        rope_theta=_rope_theta(hf), rope_fraction=1.0 if _get(hf, "position_embedding_type") == "rope" else 0.0,
        attention_scale=None if scale is None else float(scale),
        max_seq_len=_get(hf, "max_position_embeddings"), attention_bias=bool(_get(hf, "attention_bias")),
        **mamba_fields_from_hf(hf, _get, mamba_heads, d_head, bias),
        d_ff=_get(hf, "shared_intermediate_size"), mlp_bias=False,
        embedding_multiplier=_multiplier(hf, "embedding_multiplier"),
        attention_out_multiplier=residual, ssm_out_multiplier=residual, mlp_multipliers=(1.0, residual),
        logits_divisor=_multiplier(hf, "logits_scaling"),
        init_std=_get(hf, "initializer_range"), eos_token_id=first_eos(hf),
    )


def export_problems(config: ModelConfig) -> list[str]:
    residual = config.ssm_out_multiplier
    problems = mixer_block_problems(config)
    problems += differences(config, {"mlp_activation": "swiglu", "mlp_bias": False},
                            "its MLP is SwiGLU without biases")
    if config.rope_fraction not in (0.0, 1.0):
        problems.append(f"rope_fraction is {config.rope_fraction!r}, needs 1.0 or 0.0 (RoPE on all of head_dim, "
                        f"or none)")
    problems += differences(config, {"attention_out_multiplier": residual, "mlp_multipliers": (1.0, residual)},
                            "one residual_multiplier scales every branch, here ssm_out_multiplier's")
    problems += differences(config, {"lm_head_multiplier": 1.0, "attention_in_multiplier": 1.0, "key_multiplier": 1.0,
                                     "ssm_in_multiplier": 1.0, "ssm_multipliers": (1.0,) * 5},
                            "the format has no such multiplier")
    problems += gated_norm_problems(config, "mamba_proj_bias")
    problems += differences(config, {"norm_weight_in_fp32": False}, "its RMSNorm rounds before the weight")
    return problems + mamba_expand_problems(config)


def hf_config_from_model(config: ModelConfig) -> dict:
    mixers = block_mixers(config)
    scale = config.attention_scale if not default_attention_scale(config) else config.head_dim ** -0.5
    return {
        "architectures": ["GraniteMoeHybridForCausalLM"], "model_type": "granitemoehybrid",
        "vocab_size": config.vocab_size, "hidden_size": config.d_model, "num_hidden_layers": len(mixers),
        "layer_types": [MAMBA_TYPES[0] if kind == "M" else ATTENTION_TYPES[0] for kind in mixers],
        "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim, "hidden_act": "silu", "max_position_embeddings": config.max_seq_len,
        "position_embedding_type": "rope" if config.rope_fraction == 1.0 else "nope",
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "attention_bias": config.attention_bias, "attention_dropout": 0.0,
        "intermediate_size": config.d_ff, "shared_intermediate_size": config.d_ff,
        "num_local_experts": 0, "num_experts_per_tok": 0,
        **mamba_hf_fields(config), "embedding_multiplier": config.embedding_multiplier,
        "residual_multiplier": config.ssm_out_multiplier, "attention_multiplier": scale,
        "logits_scaling": config.logits_divisor,
        **({"eos_token_id": config.eos_token_id} if config.eos_token_id is not None else {}),
    }


def hf_to_ours(config: ModelConfig) -> dict:
    candidates, mlps = mixer_block_keys(config, "model.norm.weight", "post_attention_layernorm")
    for hf, mlp in mlps:
        # input_linear stacks [gate; up]: transformers activates its first half
        candidates[f"{hf}.shared_mlp.input_linear.weight"] = (f"{mlp}.mlp.gate_proj.weight",
                                                              f"{mlp}.mlp.up_proj.weight")
        candidates[f"{hf}.shared_mlp.output_linear.weight"] = f"{mlp}.mlp.down_proj.weight"
    return keep_present(candidates, config)


FAMILY = Family(
    name="Granite-4.0-H", model_type="granitemoehybrid", architecture="GraniteMoeHybridForCausalLM",
    config_from_hf=model_config_from_hf, export_problems=export_problems, hf_config=hf_config_from_model,
    key_map=hf_to_ours,
)
