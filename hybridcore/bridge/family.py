"""What the bridge knows of one Hugging Face model family, and the pieces the families share.

A family translates its config.json to one ModelConfig (a layout string plus switches), names every
checkpoint key of that config, and says why a ModelConfig cannot be written in its format. Nothing here
is keyed on a family's name: the model only ever sees a ModelConfig.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ..config import ModelConfig
from ..layout import parse_layout
from .keys import Target, expected_names, targets

# transformers' layer-type names, old and new spellings (its configs accept both)
MAMBA_TYPES = ("linear_attention", "mamba")
ATTENTION_TYPES = ("full_attention", "attention")


@dataclass(frozen=True)
class Family:
    name: str  # as people write it, for messages
    model_type: str  # config.json's model_type
    architecture: str  # the transformers class
    config_from_hf: Callable[[dict], ModelConfig]
    export_problems: Callable[[ModelConfig], list[str]]  # why the format cannot hold it; [] when it can
    hf_config: Callable[[ModelConfig], dict]  # config.json of a config without export problems
    key_map: Callable[[ModelConfig], dict[str, Target]]  # checkpoint key -> our parameter(s)
    skip_key: Callable[[str], bool] = lambda key: False  # checkpoint keys transformers ignores
    canonical_key: Callable[[str], str] = lambda key: key  # another prefix transformers reads as the same key
    ties_head: bool = True  # False: the format never ties the LM head to the embedding


def hf_reader(defaults: dict, aliases: dict[str, str] | None = None) -> Callable[[dict, str], object]:
    """get(hf, key): the value transformers' config class would hold, from config.json's dict `hf`: the
    key, or an older spelling of it (`aliases`: old -> new; the old one wins, as transformers reads it),
    or the class default."""
    older = {new: old for old, new in (aliases or {}).items()}

    def get(hf: dict, key: str):
        if key in older and older[key] in hf:
            return hf[older[key]]
        return hf[key] if key in hf else defaults[key]
    return get


def refuse_unsupported(hf: dict, get, allowed: dict[str, tuple]) -> None:
    """ValueError naming the first key whose value changes the numerics in a way hybridcore does not have."""
    for key, values in allowed.items():
        value = get(hf, key)
        if value not in values:
            raise ValueError(f"config.json: {key}={value!r} is not supported (expected one of {values})")


def build_config(**fields) -> ModelConfig:
    try:
        return ModelConfig(**fields)
    except (TypeError, ValueError) as error:
        raise ValueError(f"config.json describes an invalid model: {error}") from None


def first_eos(hf: dict):
    eos = hf.get("eos_token_id")
    if isinstance(eos, list):
        return eos[0] if eos else None
    return eos


def mamba_shapes(d_ssm: int, heads: int, d_head) -> tuple[int, int]:
    """(heads, head dim) with transformers' "auto" head dim, checked against the SSM width."""
    if d_head in ("auto", None):
        d_head = d_ssm // heads
    if not isinstance(d_head, int) or d_head * heads != d_ssm:
        raise ValueError(f"config.json: mamba_d_head ({d_head!r}) x mamba_n_heads ({heads}) must equal the "
                         f"Mamba width mamba_expand x hidden_size ({d_ssm})")
    return heads, d_head


def mixer_per_block(layer_types: list, field: str) -> list[str]:
    """'M' or '*' for each of transformers' layer types; ValueError naming `field` for any other."""
    kinds = []
    for index, layer_type in enumerate(layer_types):
        if layer_type in MAMBA_TYPES:
            kinds.append("M")
        elif layer_type in ATTENTION_TYPES:
            kinds.append("*")
        else:
            raise ValueError(f"config.json: {field}[{index}] is {layer_type!r}; hybridcore reads Mamba-2 "
                             f"({' or '.join(MAMBA_TYPES)}) and attention ({' or '.join(ATTENTION_TYPES)}) layers")
    return kinds


# ---- export checks ---------------------------------------------------------------------------------
PLAIN_MULTIPLIERS = {
    "embedding_multiplier": 1.0, "lm_head_multiplier": 1.0, "attention_in_multiplier": 1.0,
    "attention_out_multiplier": 1.0, "key_multiplier": 1.0, "ssm_in_multiplier": 1.0, "ssm_out_multiplier": 1.0,
    "mlp_multipliers": (1.0, 1.0), "ssm_multipliers": (1.0,) * 5, "logits_divisor": 1.0,
}


def differences(config: ModelConfig, wanted: dict[str, object], why: str) -> list[str]:
    """One line per field of `wanted` whose value the config does not have."""
    return [f"{name} is {getattr(config, name)!r}, needs {value!r} ({why})"
            for name, value in wanted.items() if getattr(config, name) != value]


def default_attention_scale(config: ModelConfig) -> bool:
    return config.attention_scale is None or config.attention_scale == config.head_dim ** -0.5


def block_mixers(config: ModelConfig) -> list[str] | None:
    """The mixer of each block when the layout is blocks of one mixer and one MLP ("M-*-M-"...), else None."""
    kinds = "".join(parse_layout(config.layout).kinds)
    if len(kinds) % 2 or any(kinds[i] not in "M*" or kinds[i + 1] != "-" for i in range(0, len(kinds), 2)):
        return None
    return list(kinds[::2])


def mixer_block_problems(config: ModelConfig) -> list[str]:
    if block_mixers(config) is None:
        return [f"layout {config.layout!r} is not blocks of one mixer and one MLP ('M-' or '*-' each)"]
    return []


def gated_norm_problems(config: ModelConfig, bias_field: str) -> list[str]:
    """What a format whose Mamba-2 gates before it normalises, with one bias switch (`bias_field`) for
    in_proj and out_proj, cannot hold."""
    return (differences(config, {"mamba_rms_norm": True, "mamba_norm_before_gate": False},
                        "its gated norm gates, then normalises")
            + differences(config, {"projectors_bias": config.mamba_proj_bias},
                          f"one {bias_field} covers the Mamba in_proj and out_proj"))


def mamba_expand_problems(config: ModelConfig) -> list[str]:
    if config.d_ssm % config.d_model:
        return [f"the Mamba width {config.d_ssm} is not a multiple of d_model {config.d_model} "
                f"(the format states it as the integer mamba_expand)"]
    return []


def mamba_fields_from_hf(hf: dict, get, heads: int, d_head: int, bias: bool) -> dict:
    """ModelConfig fields of the Mamba-2 and norm keys that Bamba's and Granite-4.0-H's configs spell
    alike (the inverse of mamba_hf_fields); `get` reads a key with the family's default."""
    return dict(
        mamba_n_heads=heads, mamba_d_head=d_head, mamba_d_state=get(hf, "mamba_d_state"),
        mamba_n_groups=get(hf, "mamba_n_groups"), mamba_d_conv=get(hf, "mamba_d_conv"),
        mamba_chunk_size=get(hf, "mamba_chunk_size"), mamba_conv_bias=bool(get(hf, "mamba_conv_bias")),
        mamba_proj_bias=bias, projectors_bias=bias, mamba_rms_norm=True, mamba_norm_before_gate=False,
        time_step_limit=tuple(float(v) for v in (get(hf, "time_step_limit") or (0.0, math.inf))),
        norm_eps=get(hf, "rms_norm_eps"), tie_embeddings=bool(get(hf, "tie_word_embeddings")),
    )


def mamba_hf_fields(config: ModelConfig) -> dict:
    """The Mamba-2, norm and init fields that Bamba's and Granite-4.0-H's configs spell alike."""
    return {
        "mamba_n_heads": config.mamba_n_heads, "mamba_d_head": config.mamba_d_head,
        "mamba_expand": config.d_ssm // config.d_model, "mamba_n_groups": config.mamba_n_groups,
        "mamba_d_state": config.mamba_d_state, "mamba_d_conv": config.mamba_d_conv,
        "mamba_chunk_size": config.mamba_chunk_size, "mamba_conv_bias": config.mamba_conv_bias,
        "mamba_proj_bias": config.mamba_proj_bias, "time_step_limit": list(config.time_step_limit),
        "rms_norm_eps": config.norm_eps, "tie_word_embeddings": config.tie_embeddings,
        "initializer_range": config.init_std,
    }


# ---- key maps --------------------------------------------------------------------------------------
def mixer_block_keys(config: ModelConfig, final_norm: str, mlp_norm: str) -> tuple[dict[str, Target], list]:
    """(keys of the embedding, the head, the final norm `final_norm` and of each block's norms and mixer,
    [(HF block prefix, our MLP layer prefix)] for the caller's MLP keys) of a format whose HF layer i is
    one mixer (Mamba-2 or attention) after `input_layernorm`, then an MLP after `mlp_norm`."""
    candidates = {"model.embed_tokens.weight": "embed.weight", final_norm: "final_norm.weight",
                  "lm_head.weight": "lm_head.weight"}
    mlps = []
    for i, kind in enumerate(block_mixers(config) or []):
        hf, mixer, mlp = f"model.layers.{i}", f"layers.{2 * i}", f"layers.{2 * i + 1}"
        candidates[f"{hf}.input_layernorm.weight"] = f"{mixer}.norm.weight"
        if kind == "M":
            candidates.update(mamba_keys(f"{hf}.mamba", f"{mixer}.mamba"))
        else:
            candidates.update(attention_keys(f"{hf}.self_attn", f"{mixer}.attention"))
        candidates[f"{hf}.{mlp_norm}.weight"] = f"{mlp}.norm.weight"
        mlps.append((hf, mlp))
    return candidates, mlps


def linear_keys(hf: str, ours: str) -> dict[str, Target]:
    return {f"{hf}.weight": f"{ours}.weight", f"{hf}.bias": f"{ours}.bias"}


def mamba_keys(hf: str, ours: str) -> dict[str, Target]:
    """A Mamba-2 mixer's keys; every family here names them alike (the fused in_proj and conv1d split into
    our segments, see keys.py)."""
    from ..model.mamba2 import CONV_SEGMENTS, IN_PROJ_SEGMENTS

    return {
        f"{hf}.in_proj.weight": tuple(f"{ours}.in_proj.weight_{s}" for s in IN_PROJ_SEGMENTS),
        f"{hf}.in_proj.bias": tuple(f"{ours}.in_proj.bias_{s}" for s in IN_PROJ_SEGMENTS),
        f"{hf}.conv1d.weight": tuple(f"{ours}.conv_weight_{s}" for s in CONV_SEGMENTS),
        f"{hf}.conv1d.bias": tuple(f"{ours}.conv_bias_{s}" for s in CONV_SEGMENTS),
        f"{hf}.dt_bias": f"{ours}.dt_bias", f"{hf}.A_log": f"{ours}.A_log", f"{hf}.D": f"{ours}.D",
        f"{hf}.norm.weight": f"{ours}.norm_weight",
        **linear_keys(f"{hf}.out_proj", f"{ours}.out_proj"),
    }


def attention_keys(hf: str, ours: str) -> dict[str, Target]:
    return {key: value for p in "qkvo" for key, value in linear_keys(f"{hf}.{p}_proj", f"{ours}.{p}_proj").items()}


def keep_present(candidates: dict[str, Target], config: ModelConfig) -> dict[str, Target]:
    """The candidate keys whose parameters this config has (biases, norms and a head switched off drop out)."""
    ours = set(expected_names(config))
    return {key: target for key, target in candidates.items() if all(name in ours for name in targets(target))}
