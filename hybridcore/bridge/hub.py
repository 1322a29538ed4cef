"""Hugging Face Hub ids ("org/name") -> a local snapshot directory, through huggingface_hub's cache.

The cache is tried first, without a network call; only what it lacks is downloaded, and never when
HF_HUB_OFFLINE is set. An existing local path is returned as it is, so every entry point can take
either. Only the files a model needs are fetched: config.json and the tokenizer's files, plus the
safetensors weights when `weights` is true.
"""

from __future__ import annotations

import glob
import os
import re

CONFIG_PATTERNS = ["config.json", "generation_config.json", "tokenizer*", "special_tokens_map.json", "*.model",
                   "vocab.json", "merges.txt"]
WEIGHT_PATTERNS = ["*.safetensors", "model.safetensors.index.json"]

# org/name as the Hub spells repository ids: letters, digits, '-', '_', '.'; neither part '.' or '..'
_HUB_ID = re.compile(r"(?!\.{1,2}/)[\w.-]+/(?!\.{1,2}$)[\w.-]+")


def looks_like_hub_id(text: str) -> bool:
    return _HUB_ID.fullmatch(text) is not None and "--" not in text and not text.endswith(".")


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) now, or when huggingface_hub was imported."""
    from huggingface_hub import constants

    now = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return constants.HF_HUB_OFFLINE or now.strip().upper() in ("1", "ON", "YES", "TRUE")


def _complete(directory: str, weights: bool) -> bool:
    if not os.path.isfile(os.path.join(directory, "config.json")):
        return False
    return not weights or bool(glob.glob(os.path.join(directory, "*.safetensors")))


def resolve_model_path(path_or_id: str, weights: bool = True) -> str:
    """A local directory for a path or a Hub id; ValueError naming the id when it is neither cached nor
    reachable. Anything that is neither an existing path nor shaped like an id comes back unchanged,
    for the caller's own error."""
    path_or_id = str(path_or_id)
    if os.path.exists(path_or_id) or not looks_like_hub_id(path_or_id):
        return path_or_id
    try:
        from huggingface_hub import constants, snapshot_download
    except ImportError:
        raise ValueError(f"{path_or_id!r} is not a local directory; reading it as a Hub id needs the "
                         f"huggingface_hub package (pip install huggingface_hub)") from None
    patterns = CONFIG_PATTERNS + (WEIGHT_PATTERNS if weights else [])
    cached = None
    try:
        cached = snapshot_download(path_or_id, allow_patterns=patterns, local_files_only=True)
    except Exception:  # not cached (or only partly): the Hub may still have it
        pass
    if cached is not None and _complete(cached, weights):
        return cached
    where = f"the Hub cache ({constants.HF_HUB_CACHE})"
    if offline():
        raise ValueError(f"{path_or_id!r} is not a local directory, and as a Hub id it is not (wholly) in {where} "
                         f"while HF_HUB_OFFLINE is set: download it first (huggingface-cli download "
                         f"{path_or_id}) or unset HF_HUB_OFFLINE")
    try:
        directory = snapshot_download(path_or_id, allow_patterns=patterns)
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path_or_id!r} is not a local directory, and as a Hub id it is neither in {where} nor "
                         f"reachable: {reason}") from None
    if not _complete(directory, weights):
        raise ValueError(f"Hub id {path_or_id!r} has no config.json" + (" and safetensors weights" if weights else ""))
    return directory
