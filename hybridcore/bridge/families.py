"""The Hugging Face model families the bridge reads and writes, keyed by config.json's model_type.

Import picks the family by model_type. Export writes the first family whose format holds the model's
layout and switches (a Nemotron-H-shaped model exports as Nemotron-H), or the one asked for; when
none does, the error says, family by family, what does not fit.
"""

from __future__ import annotations

from ..config import ModelConfig
from . import bamba, falcon_h1, granite, nemotron_h
from ..io.json_codec import decode
from .family import Family

FAMILIES: dict[str, Family] = {module.FAMILY.model_type: module.FAMILY
                               for module in (falcon_h1, nemotron_h, granite, bamba)}

# Hybrids transformers has that the layer grammar cannot express, and what stands in the way.
REFUSED = {
    "zamba2": "layers_block_type names 'hybrid' layers, which share one attention block (and its weights) "
              "across the depth; hybridcore's layers each own their weights",
    "zamba": "attn_layer_period adds one attention block shared by several layers; hybridcore's layers each own "
             "their weights",
    "jamba": "its Mamba layers are Mamba-1 and num_experts adds mixture-of-experts MLPs",
    "mamba": "its layers are Mamba-1 (selective scan with a per-channel state), not Mamba-2",
    "falcon_mamba": "its layers are Mamba-1 (selective scan with a per-channel state), not Mamba-2",
    "granitemoe": "it is a mixture-of-experts transformer (num_local_experts)",
}


def supported() -> str:
    return ", ".join(f"{f.model_type} ({f.name})" for f in FAMILIES.values())


def family_of(hf: dict) -> Family:
    """The family of a config.json dict, or a ValueError naming its model_type."""
    model_type = hf.get("model_type")
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    if model_type in REFUSED:
        raise ValueError(f"config.json: model_type {model_type!r} is not supported: {REFUSED[model_type]}")
    raise ValueError(f"config.json: model_type is {model_type!r}; hybridcore reads {supported()}")


def model_config_from_hf(hf: dict) -> ModelConfig:
    """ModelConfig of any supported family's config.json dict."""
    hf = decode(hf)
    return family_of(hf).config_from_hf(hf)


def family_named(name: str) -> Family:
    """A family by model_type or by name, case and punctuation aside ("nemotron_h", "Nemotron-H")."""
    def plain(text: str) -> str:
        return "".join(c for c in text.lower() if c.isalnum())
    for family in FAMILIES.values():
        if plain(name) in (plain(family.model_type), plain(family.name)):
            return family
    raise ValueError(f"unknown model family {name!r}; known: {supported()}")


def exporting_family(config: ModelConfig, requested: str | Family | None = None) -> Family:
    """The family to write `config` as: `requested`, or the first whose format holds it."""
    if requested is not None:
        family = requested if isinstance(requested, Family) else family_named(requested)
        problems = family.export_problems(config)
        if problems:
            raise ValueError(f"cannot export as {family.name}: " + "; ".join(problems))
        return family
    why = {}
    for family in FAMILIES.values():
        problems = family.export_problems(config)
        if not problems:
            return family
        why[family.name] = problems
    raise ValueError("no supported format holds this model (layout and switches): "
                     + " | ".join(f"{name}: " + "; ".join(problems) for name, problems in why.items()))
