"""Translate between transformers' FalconH1Config (as a config.json dict) and ModelConfig."""

from __future__ import annotations

import math

from ..config import ModelConfig
from ..layout import parse_layout

# transformers settings that change the numerics and that hybridcore does not implement.
UNSUPPORTED = {
    "hidden_act": ("silu",),
    "attention_dropout": (0, 0.0, None),
}


def _rope_theta(hf: dict) -> float:
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", None):
        raise ValueError(f"config.json: rope_parameters.rope_type={rope_type!r} is not supported "
                         f"(hybridcore implements plain RoPE, 'default')")
    theta = params.get("rope_theta", hf.get("rope_theta"))
    if theta is None:
        raise ValueError("config.json: no rope_theta (looked in rope_parameters and at the top level)")
    return float(theta)


def model_config_from_hf(hf: dict) -> ModelConfig:
    if hf.get("model_type") != "falcon_h1":
        raise ValueError(f"config.json: model_type is {hf.get('model_type')!r}; expected 'falcon_h1'")
    for key, allowed in UNSUPPORTED.items():
        if key in hf and hf[key] not in allowed:
            raise ValueError(f"config.json: {key}={hf[key]!r} is not supported (expected one of {allowed})")
    hidden = hf["hidden_size"]
    heads = hf["num_attention_heads"]
    d_ssm = hf.get("mamba_d_ssm") or int(hf.get("mamba_expand", 2) * hidden)
    mamba_heads = hf["mamba_n_heads"]
    d_head = hf.get("mamba_d_head", "auto")
    if d_head in ("auto", None):
        d_head = d_ssm // mamba_heads
    if d_head * mamba_heads != d_ssm:
        raise ValueError(f"config.json: mamba_d_head ({d_head}) x mamba_n_heads ({mamba_heads}) "
                         f"!= mamba_d_ssm ({d_ssm})")
    limit = hf.get("time_step_limit") or (0.0, math.inf)
    eos = hf.get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        d_model=hidden,
        layout="P-" * hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hidden // heads,
        rope_theta=_rope_theta(hf),
        max_seq_len=hf.get("max_position_embeddings", 8192),
        attention_bias=bool(hf.get("attention_bias", False)),
        mamba_n_heads=mamba_heads,
        mamba_d_head=d_head,
        mamba_d_state=hf.get("mamba_d_state", 256),
        mamba_n_groups=hf.get("mamba_n_groups", 1),
        mamba_d_conv=hf.get("mamba_d_conv", 4),
        mamba_chunk_size=hf.get("mamba_chunk_size", 256),
        mamba_conv_bias=bool(hf.get("mamba_conv_bias", True)),
        mamba_proj_bias=bool(hf.get("mamba_proj_bias", False)),
        mamba_rms_norm=bool(hf.get("mamba_rms_norm", False)),
        mamba_norm_before_gate=bool(hf.get("mamba_norm_before_gate", True)),
        time_step_limit=tuple(float(v) for v in limit),
        d_ff=hf["intermediate_size"],
        mlp_bias=bool(hf.get("mlp_bias", False)),
        projectors_bias=bool(hf.get("projectors_bias", False)),
        norm_eps=hf.get("rms_norm_eps", 1e-5),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        embedding_multiplier=hf.get("embedding_multiplier", 1.0),
        lm_head_multiplier=hf.get("lm_head_multiplier", 1.0),
        attention_in_multiplier=hf.get("attention_in_multiplier", 1.0),
        attention_out_multiplier=hf.get("attention_out_multiplier", 1.0),
        key_multiplier=hf.get("key_multiplier", 1.0),
        ssm_in_multiplier=hf.get("ssm_in_multiplier", 1.0),
        ssm_out_multiplier=hf.get("ssm_out_multiplier", 1.0),
        mlp_multipliers=tuple(hf.get("mlp_multipliers") or (1.0, 1.0)),
        ssm_multipliers=tuple(hf.get("ssm_multipliers") or (1.0,) * 5),
        init_std=hf.get("initializer_range", 0.02),
        eos_token_id=eos,
    )


def check_exportable(config: ModelConfig) -> int:
    """Falcon-H1's format expresses only "P-" * n. Returns n, else raises ValueError saying why."""
    kinds = "".join(parse_layout(config.layout).kinds)
    blocks = len(kinds) // 2
    if kinds != "P-" * blocks:
        raise ValueError(f"layout {config.layout!r} cannot be exported to Falcon-H1: its format has one "
                         f"parallel-hybrid block followed by one MLP per layer, i.e. 'P-' * n")
    return blocks


def hf_config_from_model(config: ModelConfig) -> dict:
    blocks = check_exportable(config)
    return {
        "architectures": ["FalconH1ForCausalLM"],
        "model_type": "falcon_h1",
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "num_hidden_layers": blocks,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "max_position_embeddings": config.max_seq_len,
        "attention_bias": config.attention_bias,
        "mamba_d_ssm": config.d_ssm,
        "mamba_n_heads": config.mamba_n_heads,
        "mamba_d_head": config.mamba_d_head,
        "mamba_d_state": config.mamba_d_state,
        "mamba_n_groups": config.mamba_n_groups,
        "mamba_d_conv": config.mamba_d_conv,
        "mamba_chunk_size": config.mamba_chunk_size,
        "mamba_conv_bias": config.mamba_conv_bias,
        "mamba_proj_bias": config.mamba_proj_bias,
        "mamba_rms_norm": config.mamba_rms_norm,
        "mamba_norm_before_gate": config.mamba_norm_before_gate,
        "time_step_limit": list(config.time_step_limit),
        "intermediate_size": config.d_ff,
        "mlp_bias": config.mlp_bias,
        "projectors_bias": config.projectors_bias,
        "rms_norm_eps": config.norm_eps,
        "tie_word_embeddings": config.tie_embeddings,
        "hidden_act": "silu",
        "initializer_range": config.init_std,
        "embedding_multiplier": config.embedding_multiplier,
        "lm_head_multiplier": config.lm_head_multiplier,
        "attention_in_multiplier": config.attention_in_multiplier,
        "attention_out_multiplier": config.attention_out_multiplier,
        "key_multiplier": config.key_multiplier,
        "ssm_in_multiplier": config.ssm_in_multiplier,
        "ssm_out_multiplier": config.ssm_out_multiplier,
        "mlp_multipliers": list(config.mlp_multipliers),
        "ssm_multipliers": list(config.ssm_multipliers),
        **({"eos_token_id": config.eos_token_id} if config.eos_token_id is not None else {}),
    }
