"""The key map between Falcon-H1 checkpoints and hybridcore's names, for "P-" * n layouts.

HF layer i holds one parallel-hybrid block and one MLP; hybridcore writes them as layers 2i and 2i+1.
"""

from __future__ import annotations

import re

from ..config import ModelConfig
from .config_map import check_exportable

_BLOCK = {  # HF suffix under model.layers.i -> (offset of our layer, our suffix)
    "input_layernorm.weight": (0, "norm.weight"),
    "mamba.in_proj.weight": (0, "mamba.in_proj.weight"),
    "mamba.in_proj.bias": (0, "mamba.in_proj.bias"),
    "mamba.conv1d.weight": (0, "mamba.conv_weight"),
    "mamba.conv1d.bias": (0, "mamba.conv_bias"),
    "mamba.dt_bias": (0, "mamba.dt_bias"),
    "mamba.A_log": (0, "mamba.A_log"),
    "mamba.D": (0, "mamba.D"),
    "mamba.norm.weight": (0, "mamba.norm_weight"),
    "mamba.out_proj.weight": (0, "mamba.out_proj.weight"),
    "mamba.out_proj.bias": (0, "mamba.out_proj.bias"),
    **{f"self_attn.{p}_proj.{t}": (0, f"attention.{p}_proj.{t}") for p in "qkvo" for t in ("weight", "bias")},
    "pre_ff_layernorm.weight": (1, "norm.weight"),
    **{f"feed_forward.{p}_proj.{t}": (1, f"mlp.{p}_proj.{t}") for p in ("gate", "up", "down")
       for t in ("weight", "bias")},
}
_TOP = {"model.embed_tokens.weight": "embed.weight", "model.final_layernorm.weight": "final_norm.weight",
        "lm_head.weight": "lm_head.weight"}


# Buffers transformers may have saved that are derived from the config, never parameters.
_DERIVED = re.compile(r"model\.layers\.\d+\.mamba\.mup_vector")


def is_derived_hf_key(key: str) -> bool:
    """True for checkpoint keys to skip on import (Falcon-H1's mup_vector is a function of the config)."""
    return _DERIVED.fullmatch(key) is not None


def hf_to_ours(config: ModelConfig) -> dict[str, str]:
    """Every HF key this config's checkpoint must hold -> our parameter name."""
    blocks = check_exportable(config)
    ours_expected = set(expected_names(config))
    mapping = {}
    for hf_key, ours in _TOP.items():
        if ours in ours_expected:
            mapping[hf_key] = ours
    for i in range(blocks):
        for suffix, (offset, our_suffix) in _BLOCK.items():
            ours = f"layers.{2 * i + offset}.{our_suffix}"
            if ours in ours_expected:
                mapping[f"model.layers.{i}.{suffix}"] = ours
    return mapping


def expected_names(config: ModelConfig) -> list[str]:
    """Our parameter names for this config (tied head excluded), without building tensors."""
    import torch

    from ..model import HybridLM

    with torch.device("meta"):
        model = HybridLM(config)
    return [name for name, _ in model.named_parameters()]  # named_parameters skips the tied duplicate


def ours_to_hf(config: ModelConfig) -> dict[str, str]:
    """Our parameter name -> its HF key (the inverse of hf_to_ours)."""
    return {ours: hf_key for hf_key, ours in hf_to_ours(config).items()}
