"""What the bridge knows of one Hugging Face model family, and the pieces the families share.

A family translates its config.json to one ModelConfig (a layout string plus switches), names every
checkpoint key of that config, and says why a ModelConfig cannot be written in its format. Nothing here
is keyed on a family's name: the model only ever sees a ModelConfig.
"""

from __future__ import annotations

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


# ---- key maps --------------------------------------------------------------------------------------
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
