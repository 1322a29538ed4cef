"""Hugging Face checkpoints of every supported family (families.py) <-> hybridcore: config translation,
key maps, streaming load/save, Hub ids."""

from .families import FAMILIES, exporting_family, family_named
from .hf import hf_family, load_hf, read_hf_config, save_hf
from .hub import resolve_model_path
from .model_dir import load_model_dir, save_model_dir

__all__ = ["load_hf", "save_hf", "read_hf_config", "hf_family", "load_model_dir", "save_model_dir", "FAMILIES",
           "exporting_family", "family_named", "resolve_model_path"]
