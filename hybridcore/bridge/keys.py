"""The key map between Falcon-H1 checkpoints and hybridcore's names, for "P-" * n layouts.

HF layer i holds one parallel-hybrid block and one MLP; hybridcore writes them as layers 2i and 2i+1.
A fused HF tensor (the Mamba in_proj and conv1d) maps to the tuple of our segment parameters that it
concatenates along dim 0, in order.
"""

from __future__ import annotations

import re

from ..config import ModelConfig
from ..model.mamba2 import CONV_SEGMENTS, IN_PROJ_SEGMENTS
from .config_map import check_exportable

Target = str | tuple[str, ...]  # our parameter, or the segments a fused tensor concatenates

_BLOCK = {  # HF suffix under model.layers.i -> (offset of our layer, our suffix)
    "input_layernorm.weight": (0, "norm.weight"),
    "mamba.in_proj.weight": (0, tuple(f"mamba.in_proj.weight_{s}" for s in IN_PROJ_SEGMENTS)),
    "mamba.in_proj.bias": (0, tuple(f"mamba.in_proj.bias_{s}" for s in IN_PROJ_SEGMENTS)),
    "mamba.conv1d.weight": (0, tuple(f"mamba.conv_weight_{s}" for s in CONV_SEGMENTS)),
    "mamba.conv1d.bias": (0, tuple(f"mamba.conv_bias_{s}" for s in CONV_SEGMENTS)),
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


def targets(target: Target) -> tuple[str, ...]:
    return (target,) if isinstance(target, str) else target


def hf_to_ours(config: ModelConfig) -> dict[str, Target]:
    """Every HF key this config's checkpoint must hold -> our parameter name (or segment names)."""
    blocks = check_exportable(config)
    ours_expected = set(expected_names(config))
    mapping = {}
    for hf_key, ours in _TOP.items():
        if ours in ours_expected:
            mapping[hf_key] = ours
    for i in range(blocks):
        for suffix, (offset, our_suffix) in _BLOCK.items():
            ours = tuple(f"layers.{2 * i + offset}.{name}" for name in targets(our_suffix))
            if all(name in ours_expected for name in ours):
                mapping[f"model.layers.{i}.{suffix}"] = ours if isinstance(our_suffix, tuple) else ours[0]
    return mapping


def ours_state_from_hf(config: ModelConfig, hf_state: dict, mapping: dict[str, Target] | None = None) -> dict:
    """Our state dict from an HF state dict of this config (fused tensors split into their segments);
    `mapping` is a family's key map (default: Falcon-H1's)."""
    import torch

    from ..model import HybridLM

    with torch.device("meta"):
        rows = {name: p.shape[0] for name, p in HybridLM(config).named_parameters()}
    state = {}
    for hf_key, ours in (hf_to_ours(config) if mapping is None else mapping).items():
        names = targets(ours)
        pieces = hf_state[hf_key].split([rows[name] for name in names]) if len(names) > 1 else [hf_state[hf_key]]
        state.update(zip(names, pieces))
    return state


def expected_names(config: ModelConfig) -> list[str]:
    """Our parameter names for this config (tied head excluded), without building tensors."""
    import torch

    from ..model import HybridLM

    with torch.device("meta"):
        model = HybridLM(config)
    return [name for name, _ in model.named_parameters()]  # named_parameters skips the tied duplicate


def ours_to_hf(config: ModelConfig) -> dict[Target, str]:
    """Our parameter name (or segment names) -> its HF key (the inverse of hf_to_ours)."""
    return {ours: hf_key for hf_key, ours in hf_to_ours(config).items()}
