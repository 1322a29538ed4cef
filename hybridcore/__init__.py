"""hybridcore: train parallel-hybrid attention + Mamba-2 language models (Falcon-H1 and every mix)."""

from __future__ import annotations

from .config import ModelConfig
from .layout import layout_from_ratios, parse_layout
from .model import HybridLM, build_model
from .presets import get_preset, preset_names

__version__ = "0.1.0"

# Heavier entry points load on first use so `import hybridcore` stays quick.
_LAZY = {"load_hf": "hybridcore.bridge", "save_hf": "hybridcore.bridge", "generate": "hybridcore.generate",
         "load_model": "hybridcore.io"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hybridcore' has no attribute {name!r}")


__all__ = ["ModelConfig", "HybridLM", "build_model", "get_preset", "preset_names", "parse_layout",
           "layout_from_ratios", "load_hf", "save_hf", "load_model", "generate", "__version__"]
