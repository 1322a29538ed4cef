"""Read and write safetensors checkpoints one tensor at a time: a single `model.safetensors` or
shards listed by `model.safetensors.index.json` (the layout transformers reads and writes)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from contextlib import ExitStack

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from ..io.json_codec import read_json_object, write_json

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
WEIGHT_FILES = (SINGLE_FILE, "model-*-of-*.safetensors", INDEX_FILE)  # the names write_checkpoint may write

_UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12,
          "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}


def parse_size(value: int | str, field: str = "max_shard_size") -> int:
    """Bytes from an int or a string such as "5GB" (decimal, as transformers reads it) or "512MiB"."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*", str(value).lower())
        if match is None:
            raise ValueError(f"{field}: cannot read {value!r} as a size (examples: 5GB, 500MB, 2GiB, 1000000)")
        size = int(float(match.group(1)) * _UNITS[match.group(2) or ""])
    if size <= 0:
        raise ValueError(f"{field} must be positive, got {value!r}")
    return size


class CheckpointReader:
    """Key -> file for one checkpoint directory; tensors are read only when asked for, one by one."""

    def __init__(self, directory: str):
        self.directory = directory
        self._stack = ExitStack()
        self._handles: dict[str, object] = {}
        self._held: dict[str, set[str]] = {}  # path -> keys that file really holds
        single = os.path.join(directory, SINGLE_FILE)
        index = os.path.join(directory, INDEX_FILE)
        if os.path.isfile(single):
            self.files = {key: single for key in self._open(single).keys()}
        elif os.path.isfile(index):
            self.files = self._read_index(index)
        else:
            raise ValueError(f"{directory} holds neither {SINGLE_FILE} nor {INDEX_FILE} "
                             f"(only safetensors checkpoints are read)")

    def _read_index(self, index: str) -> dict[str, str]:
        try:
            weight_map = read_json_object(index)["weight_map"]
        except (ValueError, KeyError) as error:
            raise ValueError(f"{index}: not a valid safetensors index (needs a 'weight_map' object): "
                             f"{error}") from None
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: not a valid safetensors index ('weight_map' must be an object)")
        files = {}
        for key, name in weight_map.items():
            path = os.path.join(self.directory, name)
            if not os.path.isfile(path):
                raise ValueError(f"{index}: key {key} is in shard {name}, which does not exist")
            files[key] = path
        return files

    def _open(self, path: str):
        if path not in self._handles:
            try:
                handle = self._stack.enter_context(safe_open(path, framework="pt", device="cpu"))
            except Exception as error:  # safetensors raises its own SafetensorError (not an OSError)
                raise ValueError(f"cannot read safetensors file {path} (truncated or corrupt?): {error}") from None
            self._handles[path] = handle
            self._held[path] = set(handle.keys())
        return self._handles[path]

    def _handle_for(self, key: str):
        handle = self._open(self.files[key])
        if key not in self._held[self.files[key]]:
            raise ValueError(f"{os.path.join(self.directory, INDEX_FILE)}: key {key} is listed in "
                             f"{os.path.basename(self.files[key])}, which does not hold it")
        return handle

    def keys(self) -> list[str]:
        return list(self.files)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._handle_for(key).get_slice(key).get_shape())

    def tensor(self, key: str) -> torch.Tensor:
        try:
            return self._handle_for(key).get_tensor(key)
        except ValueError:
            raise
        except Exception as error:
            raise ValueError(f"cannot read tensor {key} from {self.files[key]} (corrupt file?): {error}") from None

    def close(self) -> None:
        self._stack.close()
        self._handles.clear()
        self._held.clear()

    def __enter__(self) -> "CheckpointReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def plan_shards(sizes: Iterable[tuple[str, int]], max_shard_bytes: int | None) -> list[list[str]]:
    """Greedy split in order; a tensor bigger than the limit gets a shard of its own."""
    shards: list[list[str]] = [[]]
    used = 0
    for key, nbytes in sizes:
        if max_shard_bytes is not None and shards[-1] and used + nbytes > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(key)
        used += nbytes
    return shards


def _umask_mode() -> int:
    """The mode a plain open() gives a new file here (0o666 less the umask)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def write_checkpoint(directory: str, sizes: list[tuple[str, int]], fetch: Callable[[str], torch.Tensor],
                     max_shard_bytes: int | None = None, progress: bool = False) -> list[str]:
    """Write the named tensors (fetched shard by shard, so only one shard is copied at a time).

    One shard is written as `model.safetensors`; several as `model-0000i-of-0000n.safetensors` plus the
    index. `progress`: a bar on stderr, shard by shard, where there are several. Returns the file names
    written.
    """
    shards = plan_shards(sizes, max_shard_bytes)
    names = [SINGLE_FILE] if len(shards) == 1 else \
        [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map, mode = {}, _umask_mode()
    bar = tqdm(total=sum(n for _, n in sizes), unit="B", unit_scale=True, desc="writing safetensors",
               disable=not progress or len(shards) < 2, dynamic_ncols=True)
    for name, keys in zip(names, shards):
        tensors = {key: fetch(key).detach().to("cpu").contiguous() for key in keys}
        path = os.path.join(directory, name)
        save_file(tensors, path, metadata={"format": "pt"})
        os.chmod(path, mode)  # safetensors writes 0600; the directory's other files follow the umask
        weight_map.update({key: name for key in keys})
        bar.update(sum(t.numel() * t.element_size() for t in tensors.values()))
        del tensors
    bar.close()
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(n for _, n in sizes)}, "weight_map": weight_map}
        write_json(os.path.join(directory, INDEX_FILE), index, indent=2, sort_keys=True)
        names.append(INDEX_FILE)
    return names
