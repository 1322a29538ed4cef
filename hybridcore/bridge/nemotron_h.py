"""Nemotron-H (NemotronHForCausalLM, model_type nemotron_h), the dense releases.

Each of its blocks is one pre-norm residual sub-layer with a single mixer, written in its pattern with
hybridcore's own characters: Mamba-2 `M`, attention `*`, MLP `-`; so block i is our layer i and the
pattern is our layout string. What sets it apart: attention without positional encoding and without
biases, a squared-ReLU MLP without a gate, the gated norm over n_groups groups, RMSNorm weights
applied in fp32, no µP multipliers, an LM head never tied to the embedding. Its mixture-of-experts
blocks (`E`, "moe") are refused.

Checkpoints name the trunk `backbone.` (transformers reads `model.` as the same); its multi-token
prediction weights (`mtp.*`) are not part of the causal LM and are skipped, as transformers does.
"""

from __future__ import annotations

import math

from ..config import ModelConfig
from ..io.json_codec import decode
from .family import (ATTENTION_TYPES, MAMBA_TYPES, PLAIN_MULTIPLIERS, Family, attention_keys, build_config,
                     default_attention_scale, differences, first_eos, gated_norm_problems, hf_reader, keep_present,
                     linear_keys, mamba_keys, refuse_unsupported)

# transformers' NemotronHConfig defaults for every key read here (tests check them against it)
HF_DEFAULTS = {
    "vocab_size": 131072, "hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 128, "max_position_embeddings": 4096, "attention_dropout": 0.0, "intermediate_size": 21504,
    "mlp_hidden_act": "relu2", "mlp_bias": False, "ssm_state_size": 128, "mamba_num_heads": 128,
    "mamba_head_dim": 64, "mamba_hidden_act": "silu", "n_groups": 8, "conv_kernel": 4,
    "time_step_limit": (0.0, math.inf), "use_conv_bias": True, "chunk_size": 128, "use_bias": False,
    "initializer_range": 0.02, "layer_norm_epsilon": 1e-5,
}
# older config.json spellings transformers still reads (and prefers when present)
ALIASES = {"mamba_n_groups": "n_groups", "mamba_d_conv": "conv_kernel", "mamba_dt_limit": "time_step_limit",
           "mamba_conv_bias": "use_conv_bias", "mamba_chunk_size": "chunk_size"}
UNSUPPORTED = {"mlp_hidden_act": ("relu2",), "mamba_hidden_act": ("silu",), "attention_dropout": (0, 0.0, None)}
_get = hf_reader(HF_DEFAULTS, ALIASES)

_TYPE_KINDS = {**{name: "M" for name in MAMBA_TYPES}, **{name: "*" for name in ATTENTION_TYPES}, "mlp": "-"}
_PATTERN_KINDS = {"M": "M", "*": "*", "-": "-"}  # hybrid_override_pattern's characters are hybridcore's
_BLOCK_NAMES = {"M": MAMBA_TYPES[0], "*": ATTENTION_TYPES[0], "-": "mlp"}


def _layout(hf: dict) -> str:
    """The layout string, from layers_block_type (or layer_types) or else the older hybrid_override_pattern."""
    names = hf.get("layers_block_type") or hf.get("layer_types")
    field, kinds = "layers_block_type", _TYPE_KINDS
    if not names:
        names = hf.get("hybrid_override_pattern")
        field, kinds = "hybrid_override_pattern", _PATTERN_KINDS
    if not names:
        raise ValueError("config.json: neither layers_block_type nor hybrid_override_pattern says which blocks "
                         "the model has (transformers' default includes a mixture-of-experts block)")
    for index, name in enumerate(names):
        if name in ("moe", "E"):
            raise ValueError(f"config.json: {field}[{index}] is {name!r}, a mixture-of-experts block; hybridcore's "
                             f"layers are dense (M, *, -), so MoE Nemotron-H models are not supported")
        if name not in kinds:
            raise ValueError(f"config.json: {field}[{index}] is {name!r}; expected a Mamba-2, attention or MLP block")
    return "".join(kinds[name] for name in names)


def model_config_from_hf(hf: dict) -> ModelConfig:
    hf = decode(hf)
    refuse_unsupported(hf, _get, UNSUPPORTED)
    heads = _get(hf, "num_attention_heads")
    # the released configs name the head width attention_head_dim (transformers' field is head_dim)
    head_dim = hf["head_dim"] if "head_dim" in hf else hf.get("attention_head_dim", HF_DEFAULTS["head_dim"])
    use_bias = bool(_get(hf, "use_bias"))  # transformers' in_proj and out_proj both follow use_bias
    return build_config(
        vocab_size=_get(hf, "vocab_size"), d_model=_get(hf, "hidden_size"), layout=_layout(hf),
        num_heads=heads, num_kv_heads=_get(hf, "num_key_value_heads") or heads, head_dim=head_dim,
        rope_fraction=0.0,  # no positional encoding; transformers' attention has no biases either
        max_seq_len=_get(hf, "max_position_embeddings"), attention_bias=False,
        mamba_n_heads=_get(hf, "mamba_num_heads"), mamba_d_head=_get(hf, "mamba_head_dim"),
        mamba_d_state=_get(hf, "ssm_state_size"), mamba_n_groups=_get(hf, "n_groups"),
        mamba_d_conv=_get(hf, "conv_kernel"), mamba_chunk_size=_get(hf, "chunk_size"),
        mamba_conv_bias=bool(_get(hf, "use_conv_bias")), mamba_proj_bias=use_bias, projectors_bias=use_bias,
        mamba_rms_norm=True, mamba_norm_before_gate=False,
        time_step_limit=tuple(float(v) for v in (_get(hf, "time_step_limit") or (0.0, math.inf))),
        d_ff=_get(hf, "intermediate_size"), mlp_bias=bool(_get(hf, "mlp_bias")), mlp_activation="relu2",
        # transformers never ties this head, whatever tie_word_embeddings says: lm_head.weight is its own
        norm_eps=_get(hf, "layer_norm_epsilon"), norm_weight_in_fp32=True, tie_embeddings=False,
        init_std=_get(hf, "initializer_range"), eos_token_id=first_eos(hf),
    )


def export_problems(config: ModelConfig) -> list[str]:
    problems = []
    if "P" in config.layout:
        problems.append(f"layout {config.layout!r} has parallel-hybrid 'P' layers; Nemotron-H blocks hold one "
                        f"mixer each (M, * or -)")
    problems += differences(config, {"mlp_activation": "relu2"}, "its MLP is squared ReLU without a gate")
    problems += differences(config, {"rope_fraction": 0.0}, "its attention has no positional encoding")
    problems += differences(config, {"attention_bias": False, "tie_embeddings": False},
                            "its attention has no biases and its LM head is never tied")
    problems += gated_norm_problems(config, "use_bias")
    problems += differences(config, {"norm_weight_in_fp32": True}, "its RMSNorm applies the weight in fp32")
    problems += differences(config, PLAIN_MULTIPLIERS, "the format has no multipliers")
    if not default_attention_scale(config):
        problems.append(f"attention_scale is {config.attention_scale!r}, needs None (scale head_dim ** -0.5)")
    return problems


def hf_config_from_model(config: ModelConfig) -> dict:
    return {
        "architectures": ["NemotronHForCausalLM"], "model_type": "nemotron_h",
        "vocab_size": config.vocab_size, "hidden_size": config.d_model,
        "layers_block_type": [_BLOCK_NAMES[kind] for kind in config.layer_kinds],
        "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim, "max_position_embeddings": config.max_seq_len, "attention_bias": False,
        "attention_dropout": 0.0, "intermediate_size": config.d_ff, "mlp_hidden_act": "relu2",
        "mlp_bias": config.mlp_bias, "ssm_state_size": config.mamba_d_state,
        "mamba_num_heads": config.mamba_n_heads, "mamba_head_dim": config.mamba_d_head,
        "mamba_hidden_act": "silu", "n_groups": config.mamba_n_groups, "conv_kernel": config.mamba_d_conv,
        "chunk_size": config.mamba_chunk_size, "use_conv_bias": config.mamba_conv_bias,
        "use_bias": config.mamba_proj_bias, "time_step_limit": list(config.time_step_limit),
        "layer_norm_epsilon": config.norm_eps, "tie_word_embeddings": False, "initializer_range": config.init_std,
        **({"eos_token_id": config.eos_token_id} if config.eos_token_id is not None else {}),
    }


def hf_to_ours(config: ModelConfig) -> dict:
    candidates = {"backbone.embeddings.weight": "embed.weight", "backbone.norm_f.weight": "final_norm.weight",
                  "lm_head.weight": "lm_head.weight"}
    for i, kind in enumerate(config.layer_kinds):
        hf, ours = f"backbone.layers.{i}", f"layers.{i}"
        candidates[f"{hf}.norm.weight"] = f"{ours}.norm.weight"
        if kind == "M":
            candidates.update(mamba_keys(f"{hf}.mixer", f"{ours}.mamba"))
        elif kind == "*":
            candidates.update(attention_keys(f"{hf}.mixer", f"{ours}.attention"))
        else:
            for name in ("up_proj", "down_proj"):
                candidates.update(linear_keys(f"{hf}.mixer.{name}", f"{ours}.mlp.{name}"))
    return keep_present(candidates, config)


def canonical_key(key: str) -> str:
    return "backbone." + key[len("model."):] if key.startswith("model.") else key


FAMILY = Family(
    name="Nemotron-H", model_type="nemotron_h", architecture="NemotronHForCausalLM",
    config_from_hf=model_config_from_hf, export_problems=export_problems, hf_config=hf_config_from_model,
    key_map=hf_to_ours, skip_key=lambda key: key.startswith("mtp."), canonical_key=canonical_key, ties_head=False,
)
