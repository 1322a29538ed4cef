"""Reading and editing safetensors directories independently of the code under test."""

from __future__ import annotations

import json
import os

from safetensors.torch import load_file, save_file


def read_all(directory) -> dict:
    """Every tensor of a checkpoint directory (single file or sharded), via safetensors alone."""
    directory = str(directory)
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as handle:
            files = sorted(set(json.load(handle)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    tensors = {}
    for name in files:
        tensors.update(load_file(os.path.join(directory, name)))
    return tensors


def edit_single_file(directory, edit) -> None:
    """Rewrite DIR/model.safetensors as edit(tensors) returns it."""
    path = os.path.join(str(directory), "model.safetensors")
    tensors = edit(load_file(path))
    save_file(tensors, path, metadata={"format": "pt"})


def listing(directory) -> list[str]:
    return sorted(os.listdir(str(directory)))
