"""Falcon-H1 (FalconH1ForCausalLM, model_type falcon_h1) as a bridge family: "P-" per HF layer.

Its translation predates the other families and lives in config_map.py and keys.py; the Tiny, R and
Arabic releases are the same model_type and read through the same fields.
"""

from __future__ import annotations

from . import config_map, keys
from .family import Family

FAMILY = Family(
    name="Falcon-H1", model_type="falcon_h1", architecture="FalconH1ForCausalLM",
    config_from_hf=config_map.model_config_from_hf, export_problems=config_map.export_problems,
    hf_config=config_map.hf_config_from_model, key_map=keys.hf_to_ours, skip_key=keys.is_derived_hf_key,
)
