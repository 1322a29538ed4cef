"""Hugging Face Falcon-H1 directories <-> HybridLM: `load_hf` and `save_hf`."""

from __future__ import annotations

import os

import torch

from ..config import ModelConfig
from ..io.files import atomic_directory, check_output
from ..io.json_codec import read_json_object, write_json
from ..model import HybridLM
from .config_map import hf_config_from_model, model_config_from_hf
from .keys import hf_to_ours, is_derived_hf_key, ours_to_hf, targets
from .loading import load_checkpoint
from .safetensors_io import CheckpointReader, parse_size, write_checkpoint

CONFIG_FILE = "config.json"
TIED_HEAD_KEY = "lm_head.weight"
DEFAULT_MAX_SHARD_BYTES = 5 * 10 ** 9  # transformers' "5GB"


def read_hf_config(path: str) -> ModelConfig:
    if not os.path.isdir(path):
        raise ValueError(f"{path} is not a directory (expected a Hugging Face Falcon-H1 model directory)")
    data = read_json_object(os.path.join(path, CONFIG_FILE), f"{path} has no {CONFIG_FILE}")
    return model_config_from_hf(data)


def load_hf(path: str, dtype: torch.dtype | str | None = None, device: str | torch.device | None = None) -> HybridLM:
    """A Falcon-H1 directory (config.json + safetensors, sharded or not) as a HybridLM.

    dtype None keeps each tensor's dtype from the checkpoint; device None means CPU.
    """
    config = read_hf_config(path)
    with CheckpointReader(path) as reader:
        return load_checkpoint(config, reader, hf_to_ours(config), source=path, dtype=dtype, device=device,
                               skip=is_derived_hf_key,
                               tied_head_key=TIED_HEAD_KEY if config.tie_embeddings else None)


def exportable_tensors(model: HybridLM) -> dict[str, tuple[torch.Tensor, ...]]:
    """HF key -> the parameters its tensor concatenates (one, or a fused tensor's segments); ValueError
    if the model is not a whole "P-" * n model."""
    mapping = ours_to_hf(model.config)  # raises for layouts Falcon-H1 cannot express
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


def hf_state_dict(model: HybridLM) -> dict[str, torch.Tensor]:
    """The model's state under Falcon-H1's keys (fused tensors joined), e.g. to load into transformers."""
    return {key: _joined(parts) for key, parts in exportable_tensors(model).items()}


def save_hf(model: HybridLM, path: str, max_shard_bytes: int | str = DEFAULT_MAX_SHARD_BYTES,
            overwrite: bool = False, inputs=()) -> None:
    """Write `path` as a directory transformers' FalconH1ForCausalLM.from_pretrained loads.

    Only "P-" * n layouts export. The directory appears complete or not at all; `overwrite` never
    replaces one of `inputs` (what the model was read from) or a training run.
    """
    limit = parse_size(max_shard_bytes, "max_shard_bytes")
    check_output(path, overwrite, inputs)
    hf_config = hf_config_from_model(model.config)
    tensors = exportable_tensors(model)
    hf_config["dtype"] = str(tensors["model.embed_tokens.weight"][0].dtype).removeprefix("torch.")
    sizes = [(key, sum(t.numel() * t.element_size() for t in parts)) for key, parts in tensors.items()]
    with atomic_directory(path, overwrite, inputs) as staging:
        write_json(staging / CONFIG_FILE, hf_config, indent=2, sort_keys=True)
        write_checkpoint(str(staging), sizes, lambda key: _joined(tensors[key]), limit)
