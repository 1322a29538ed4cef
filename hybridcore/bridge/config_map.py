"""Translate between transformers' FalconH1Config (as a config.json dict) and ModelConfig.

A key missing from config.json takes transformers' FalconH1Config default (HF_DEFAULTS), because that
is what `from_pretrained` would build; reading it any other way would silently change the model.
"""

from __future__ import annotations

import math

from ..config import ModelConfig
from ..io.json_codec import decode
from ..layout import parse_layout

# transformers' FalconH1Config defaults for every key the translation reads (tests check them against it).
HF_DEFAULTS = {
    "vocab_size": 128000, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_act": "silu", "initializer_range": 0.02,
    "rms_norm_eps": 1e-5, "tie_word_embeddings": False, "max_position_embeddings": 8192,
    "attention_dropout": 0.0, "attention_bias": False, "mlp_bias": False, "projectors_bias": False,
    "mamba_d_ssm": 1024, "mamba_n_heads": 128, "mamba_d_head": "auto", "mamba_n_groups": 1,
    "mamba_d_state": 256, "mamba_d_conv": 4, "mamba_expand": 2, "mamba_chunk_size": 256,
    "mamba_conv_bias": True, "mamba_proj_bias": False, "mamba_norm_before_gate": True, "mamba_rms_norm": False,
    "time_step_limit": (0.0, math.inf), "lm_head_multiplier": 1.0, "embedding_multiplier": 1.0,
    "mlp_multipliers": None, "key_multiplier": 1.0, "attention_out_multiplier": 1.0,
    "attention_in_multiplier": 1.0, "ssm_multipliers": None, "ssm_in_multiplier": 1.0, "ssm_out_multiplier": 1.0,
}
DEFAULT_ROPE_THETA = 10000.0  # transformers' default_theta when config.json names none

# transformers settings that change the numerics and that hybridcore does not implement.
UNSUPPORTED = {
    "hidden_act": ("silu",),
    "attention_dropout": (0, 0.0, None),
}

def _get(hf: dict, key: str):
    return hf[key] if key in hf else HF_DEFAULTS[key]


def _rope_theta(hf: dict) -> float:
    # transformers' priority: the rope_parameters (or legacy rope_scaling) dict, then top-level rope_theta.
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if not isinstance(params, dict):
        raise ValueError(f"config.json: rope_parameters must be an object, got {params!r}")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", None):
        raise ValueError(f"config.json: rope_parameters.rope_type={rope_type!r} is not supported "
                         f"(expected 'default': hybridcore implements plain RoPE)")
    theta = params.get("rope_theta", hf.get("rope_theta"))
    return float(DEFAULT_ROPE_THETA if theta is None else theta)


def _mamba_shapes(hf: dict) -> tuple[int, int]:
    """(mamba_n_heads, mamba_d_head) as transformers derives them."""
    d_ssm = _get(hf, "mamba_d_ssm")
    if d_ssm is None:  # an explicit null means "expand x hidden"
        d_ssm = int(_get(hf, "mamba_expand") * _get(hf, "hidden_size"))
    heads = _get(hf, "mamba_n_heads")
    d_head = _get(hf, "mamba_d_head")
    if d_head in ("auto", None):
        d_head = d_ssm // heads
    if not isinstance(d_head, int) or d_head * heads != d_ssm:
        raise ValueError(f"config.json: mamba_d_head ({d_head!r}) x mamba_n_heads ({heads}) "
                         f"must equal mamba_d_ssm ({d_ssm})")
    return heads, d_head


def model_config_from_hf(hf: dict) -> ModelConfig:
    hf = decode(hf)  # transformers writes non-finite floats as {"__float__": "Infinity"}; a decoded dict passes
    if hf.get("model_type") != "falcon_h1":
        raise ValueError(f"config.json: model_type is {hf.get('model_type')!r}; expected 'falcon_h1'")
    for key, allowed in UNSUPPORTED.items():
        if key in hf and hf[key] not in allowed:
            raise ValueError(f"config.json: {key}={hf[key]!r} is not supported (expected one of {allowed})")
    hidden = _get(hf, "hidden_size")
    heads = _get(hf, "num_attention_heads")
    mamba_heads, d_head = _mamba_shapes(hf)
    limit = _get(hf, "time_step_limit") or (0.0, math.inf)
    eos = hf.get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    try:
        return ModelConfig(
            vocab_size=_get(hf, "vocab_size"),
            d_model=hidden,
            layout="P-" * _get(hf, "num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=_get(hf, "num_key_value_heads") or heads,
            head_dim=hf.get("head_dim") or hidden // heads,
            rope_theta=_rope_theta(hf),
            max_seq_len=_get(hf, "max_position_embeddings"),
            attention_bias=bool(_get(hf, "attention_bias")),
            mamba_n_heads=mamba_heads,
            mamba_d_head=d_head,
            mamba_d_state=_get(hf, "mamba_d_state"),
            mamba_n_groups=_get(hf, "mamba_n_groups"),
            mamba_d_conv=_get(hf, "mamba_d_conv"),
            mamba_chunk_size=_get(hf, "mamba_chunk_size"),
            mamba_conv_bias=bool(_get(hf, "mamba_conv_bias")),
            mamba_proj_bias=bool(_get(hf, "mamba_proj_bias")),
            mamba_rms_norm=bool(_get(hf, "mamba_rms_norm")),
            mamba_norm_before_gate=bool(_get(hf, "mamba_norm_before_gate")),
            time_step_limit=tuple(float(v) for v in limit),
            d_ff=_get(hf, "intermediate_size"),
            mlp_bias=bool(_get(hf, "mlp_bias")),
            projectors_bias=bool(_get(hf, "projectors_bias")),
            norm_eps=_get(hf, "rms_norm_eps"),
            tie_embeddings=bool(_get(hf, "tie_word_embeddings")),
            embedding_multiplier=_get(hf, "embedding_multiplier"),
            lm_head_multiplier=_get(hf, "lm_head_multiplier"),
            attention_in_multiplier=_get(hf, "attention_in_multiplier"),
            attention_out_multiplier=_get(hf, "attention_out_multiplier"),
            key_multiplier=_get(hf, "key_multiplier"),
            ssm_in_multiplier=_get(hf, "ssm_in_multiplier"),
            ssm_out_multiplier=_get(hf, "ssm_out_multiplier"),
            mlp_multipliers=tuple(_get(hf, "mlp_multipliers") or (1.0, 1.0)),
            ssm_multipliers=tuple(_get(hf, "ssm_multipliers") or (1.0,) * 5),
            init_std=_get(hf, "initializer_range"),
            eos_token_id=eos,
        )
    except (TypeError, ValueError) as error:
        raise ValueError(f"config.json describes an invalid model: {error}") from None


def export_problems(config: ModelConfig) -> list[str]:
    """Why Falcon-H1's format cannot hold this config ([] when it can)."""
    kinds = "".join(parse_layout(config.layout).kinds)
    problems = []
    if kinds != "P-" * (len(kinds) // 2):
        problems.append(f"layout {config.layout!r} cannot be exported to Falcon-H1: its format has one "
                        f"parallel-hybrid block followed by one MLP per layer, i.e. 'P-' * n")
    switches = {"rope_fraction": 1.0, "mlp_activation": "swiglu", "logits_divisor": 1.0, "norm_weight_in_fp32": False}
    problems += [f"{name} is {getattr(config, name)!r}, needs {value!r} (Falcon-H1 has no such switch)"
                 for name, value in switches.items() if getattr(config, name) != value]
    if config.attention_scale is not None and config.attention_scale != config.head_dim ** -0.5:
        problems.append(f"attention_scale is {config.attention_scale!r}, needs None (Falcon-H1 scales by "
                        f"head_dim ** -0.5; its key_multiplier scales the keys)")
    return problems


def check_exportable(config: ModelConfig) -> int:
    """Falcon-H1's format expresses only "P-" * n with its own switches. Returns n, else raises ValueError
    saying why."""
    problems = export_problems(config)
    if problems:
        raise ValueError("; ".join(problems))
    return len(config.layer_kinds) // 2


def hf_config_from_model(config: ModelConfig) -> dict:
    """config.json for this model. Non-finite floats stay Python floats; hybridcore.io.json_codec writes
    them as transformers does."""
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
        "rope_theta": config.rope_theta,  # for transformers 4.x, which reads only this
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
        "attention_dropout": 0.0,
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
