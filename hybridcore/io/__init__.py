"""Files on disk, below every command: the one JSON codec, the one atomic file and directory writer,
advisory locks, the training checkpoint directory's reading side, and `load_model` for every format.

Layering: json_codec, files and lock import nothing from hybridcore; checkpoints reads what
train/checkpoint.py writes; load dispatches to the format readers (DCP checkpoints through
hybridcore.parallel, Hugging Face and model directories through hybridcore.bridge), imported on use.
train, bridge's commands, eval and generate all load models through here.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"load_model": "load", "open_source": "load", "ModelSource": "load"}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_EXPORTS)
