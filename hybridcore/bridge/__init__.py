"""Hugging Face Falcon-H1 checkpoints <-> hybridcore: config translation, key map, streaming load/save."""

from .hf import load_hf, read_hf_config, save_hf
from .model_dir import load_model_dir, save_model_dir

__all__ = ["load_hf", "save_hf", "read_hf_config", "load_model_dir", "save_model_dir"]
