"""Hugging Face model directories <-> HybridLM: `load_hf` and `save_hf`, for every family in families.py.

A directory is read by its config.json's model_type; a Hub id ("org/name") resolves to a local snapshot
first (hub.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..config import ModelConfig
from ..io.files import atomic_directory, check_output, copy_files
from ..io.json_codec import read_json_object, write_json
from ..model import HybridLM
from .families import exporting_family, family_of, model_config_from_hf
from .family import Family
from .hub import resolve_model_path
from .keys import targets
from .loading import load_checkpoint
from .safetensors_io import WEIGHT_FILES, CheckpointReader, parse_size, write_checkpoint

CONFIG_FILE = "config.json"
TIED_HEAD_KEY = "lm_head.weight"
DEFAULT_MAX_SHARD_BYTES = 5 * 10 ** 9  # transformers' "5GB"


def read_hf_json(path: str) -> dict:
    """config.json of a Hugging Face model directory or Hub id."""
    path = resolve_model_path(path, weights=False)
    if not os.path.isdir(path):
        raise ValueError(f"{path} is not a directory (expected a Hugging Face model directory or Hub id)")
    return read_json_object(os.path.join(path, CONFIG_FILE), f"{path} has no {CONFIG_FILE}")


def read_hf_config(path: str) -> ModelConfig:
    return model_config_from_hf(read_hf_json(path))


def hf_family(path: str) -> Family:
    return family_of(read_hf_json(path))


class _CanonicalKeys:
    """A checkpoint reader that shows each key under the spelling the family's key map uses."""

    def __init__(self, reader: CheckpointReader, family: Family, source: str):
        self.reader, self.original = reader, {}
        for key in reader.keys():
            name = family.canonical_key(key)
            if name in self.original:
                raise ValueError(f"{source}: keys {self.original[name]} and {key} name the same tensor")
            self.original[name] = key

    def keys(self) -> list[str]:
        return list(self.original)

    def shape(self, key: str):
        return self.reader.shape(self.original[key])

    def tensor(self, key: str) -> torch.Tensor:
        return self.reader.tensor(self.original[key])


def load_hf(path: str, dtype: torch.dtype | str | None = None, device: str | torch.device | None = None) -> HybridLM:
    """A Hugging Face directory (config.json + safetensors, sharded or not) or Hub id as a HybridLM.

    dtype None keeps each tensor's dtype from the checkpoint; device None means CPU.
    """
    path = resolve_model_path(path)
    data = read_hf_json(path)
    family = family_of(data)
    config = model_config_from_hf(data)
    with CheckpointReader(path) as reader:
        tied = TIED_HEAD_KEY if config.tie_embeddings and family.ties_head else None
        return load_checkpoint(config, _CanonicalKeys(reader, family, path), family.key_map(config), source=path,
                               dtype=dtype, device=device, skip=family.skip_key, tied_head_key=tied)


def exportable_tensors(model: HybridLM, family: str | Family | None = None) -> dict[str, tuple[torch.Tensor, ...]]:
    """HF key -> the parameters its tensor concatenates (one, or a fused tensor's segments), in the format of
    `family` (None: the first that holds the model); ValueError saying why when it cannot."""
    family = exporting_family(model.config, family)
    mapping = {ours: hf_key for hf_key, ours in family.key_map(model.config).items()}
    params = dict(model.named_parameters())
    wanted = {name for ours in mapping for name in targets(ours)}
    if set(params) != wanted:
        absent = sorted(wanted - set(params)) or sorted(set(params) - wanted)
        raise ValueError(f"the model's parameters do not match its config (e.g. {absent[0]}); "
                         f"export a whole model, not a pipeline stage")
    return {hf_key: tuple(params[name] for name in targets(ours)) for ours, hf_key in mapping.items()}


def _joined(parts: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """One tensor from its parts, concatenated only when it has several (when the shard is written)."""
    with torch.no_grad():
        return parts[0] if len(parts) == 1 else torch.cat(parts)


def hf_state_dict(model: HybridLM, family: str | Family | None = None) -> dict[str, torch.Tensor]:
    """The model's state under a family's keys (fused tensors joined), e.g. to load into transformers."""
    return {key: _joined(parts) for key, parts in exportable_tensors(model, family).items()}


def hf_output_names(extra_files=()) -> tuple[str, ...]:
    """What save_hf writes in its directory (with these extra files copied in)."""
    return (CONFIG_FILE, *WEIGHT_FILES, *(Path(f).name for f in extra_files))


def save_hf(model: HybridLM, path: str, max_shard_bytes: int | str = DEFAULT_MAX_SHARD_BYTES,
            overwrite: bool = False, inputs=(), family: str | Family | None = None, extra_files=(),
            progress: bool = False) -> Family:
    """Write `path` as a directory transformers' from_pretrained loads, in the format of `family` (a
    model_type or name; None: the first family whose format holds the model), with `extra_files` (the
    tokenizer's) copied in; `progress`: a bar on stderr while several safetensors files are written.
    Returns the family written.

    The directory appears complete or not at all; `overwrite` replaces only an earlier output of this
    function: never one of `inputs` (what the model was read from), a training run, or a directory holding
    other files.
    """
    limit = parse_size(max_shard_bytes, "max_shard_bytes")
    own = hf_output_names(extra_files)
    check_output(path, overwrite, inputs, own)
    family = exporting_family(model.config, family)
    hf_config = family.hf_config(model.config)
    tensors = exportable_tensors(model, family)
    hf_config["dtype"] = str(model.embed.weight.dtype).removeprefix("torch.")
    sizes = [(key, sum(t.numel() * t.element_size() for t in parts)) for key, parts in tensors.items()]
    with atomic_directory(path, overwrite, inputs, own) as staging:
        write_json(staging / CONFIG_FILE, hf_config, indent=2, sort_keys=True)
        write_checkpoint(str(staging), sizes, lambda key: _joined(tensors[key]), limit, progress=progress)
        copy_files(extra_files, staging)
    return family
