"""hybridcore's own model directory: `hybridcore.json` (format, version, ModelConfig) and
`model.safetensors` under hybridcore's parameter names, with the tokenizer's files of the Hugging Face
directory it came from. Any layout, not only Falcon-H1's."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..config import ModelConfig
from ..io.files import atomic_directory, copy_files
from ..io.json_codec import read_json_object, write_json
from ..model import HybridLM
from .loading import load_checkpoint
from .safetensors_io import WEIGHT_FILES, CheckpointReader, write_checkpoint

META_FILE = "hybridcore.json"
FORMAT = "hybridcore-model"
VERSION = 1


def is_model_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, META_FILE))


def model_dir_names(extra_files=()) -> tuple[str, ...]:
    """What save_model_dir writes in its directory (with these extra files copied in)."""
    return (META_FILE, *WEIGHT_FILES, *(Path(f).name for f in extra_files))


def save_model_dir(model: HybridLM, path: str, overwrite: bool = False, inputs=(), extra_files=()) -> None:
    """`path` as a model directory, with `extra_files` (the tokenizer's) copied in; `overwrite` replaces only
    an earlier output of this function (never one of `inputs`, a training run, or a directory holding other
    files)."""
    params = dict(model.named_parameters())  # the tied head is the embedding: stored once
    with torch.device("meta"):
        expected = {name for name, _ in HybridLM(model.config).named_parameters()}
    if set(params) != expected:
        absent = sorted(expected ^ set(params))
        raise ValueError(f"the model's parameters do not match its config (e.g. {absent[0]}); "
                         f"save a whole model, not a pipeline stage")
    meta = {"format": FORMAT, "version": VERSION, "config": model.config.to_dict()}
    sizes = [(name, p.numel() * p.element_size()) for name, p in params.items()]
    with atomic_directory(path, overwrite, inputs, model_dir_names(extra_files)) as staging:
        write_json(staging / META_FILE, meta)  # time_step_limit's default upper bound is infinity: tagged
        write_checkpoint(str(staging), sizes, params.__getitem__, max_shard_bytes=None)
        copy_files(extra_files, staging)


def read_model_config(path: str) -> ModelConfig:
    meta_path = os.path.join(path, META_FILE)
    meta = read_json_object(meta_path, f"{path} is not a hybridcore model directory (no {META_FILE})")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise ValueError(f"{meta_path}: version is {meta.get('version')!r}, expected {VERSION}")
    if not isinstance(meta.get("config"), dict):
        raise ValueError(f"{meta_path}: 'config' must be an object of ModelConfig fields")
    return ModelConfig.from_dict(meta["config"])


def load_model_dir(path: str, dtype: torch.dtype | str | None = None,
                   device: str | torch.device | None = None) -> HybridLM:
    config = read_model_config(path)
    with torch.device("meta"):
        names = [name for name, _ in HybridLM(config).named_parameters()]
    with CheckpointReader(path) as reader:
        return load_checkpoint(config, reader, {name: name for name in names}, source=path, dtype=dtype,
                               device=device)
