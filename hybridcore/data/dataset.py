"""Read a prepared data directory: meta.json, raw token shards (memory-mapped) and a document index.

Layout written by `prepare`:
    meta.json                 format, vocab_size, eos_id, dtype, tokenizer, per-split shards and counts
    train_000.bin, ...        raw little-endian token ids, one split's stream cut into shards
    train_docs.npy            int64 [num_docs, 2]: (start, length) of each document in the split's stream;
                              length counts the EOS that ends the document
    val_000.bin, val_docs.npy the same for the validation split
    tokenizer.json | byte_tokenizer.json
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..io import json_codec

FORMAT = "hybridcore-tokens"
FORMAT_VERSION = 1
SPLITS = ("train", "val")


def read_meta(data_dir: str | Path) -> dict:
    data_dir = Path(data_dir)
    path = data_dir / "meta.json"
    if not data_dir.is_dir():
        raise ValueError(f"{data_dir}: no such data directory (create one with `hybridcore prepare`)")
    if not path.is_file():
        raise ValueError(f"{data_dir}: no meta.json; not a prepared data directory (run `hybridcore prepare`)")
    try:
        meta = json_codec.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: corrupt meta.json ({error})") from error
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a hybridcore token directory (format {meta.get('format')!r})"
                         if isinstance(meta, dict) else f"{path}: corrupt meta.json")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {meta.get('format_version')!r} is not supported "
                         f"(this hybridcore reads version {FORMAT_VERSION}); prepare the data again")
    for key in ("vocab_size", "eos_id", "dtype", "tokenizer", "splits"):
        if key not in meta:
            raise ValueError(f"{path}: corrupt meta.json, missing {key!r}")
    return meta


class TokenDataset:
    """One split of a prepared directory: a flat token stream plus document (start, length) arrays."""

    def __init__(self, data_dir: str | Path, split: str = "train"):
        self.data_dir = Path(data_dir)
        self.meta = meta = read_meta(self.data_dir)
        if split not in meta["splits"]:
            raise ValueError(f"split: {split!r} is not in {self.data_dir} (splits: {sorted(meta['splits'])})")
        self.split = split
        self.vocab_size = int(meta["vocab_size"])
        self.eos_id = int(meta["eos_id"])
        self.dtype = np.dtype(meta["dtype"])
        info = meta["splits"][split]
        self.shards = [self._open_shard(shard) for shard in info["shards"]]
        sizes = np.array([len(s) for s in self.shards], dtype=np.int64)
        # shard_offsets[i] = index in the split's stream of shard i's first token
        self.shard_offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.num_tokens = int(self.shard_offsets[-1])
        if self.num_tokens != info["num_tokens"]:
            raise ValueError(f"{self.data_dir}: {split} shards hold {self.num_tokens} tokens, meta.json says "
                             f"{info['num_tokens']}; the directory is corrupt")
        self.starts, self.lengths = self._open_index(info)

    def _open_shard(self, shard: dict) -> np.memmap:
        path = self.data_dir / shard["file"]
        expected = int(shard["num_tokens"]) * self.dtype.itemsize
        if not path.is_file() or path.stat().st_size != expected:
            found = path.stat().st_size if path.is_file() else "missing"
            raise ValueError(f"{path}: expected {expected} bytes, found {found}; the directory is corrupt")
        return np.memmap(path, dtype=self.dtype, mode="r")

    def _open_index(self, info: dict) -> tuple[np.ndarray, np.ndarray]:
        path = self.data_dir / info["documents"]
        try:
            index = np.load(path)
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: cannot read the document index ({error})") from error
        if index.ndim != 2 or index.shape != (info["num_docs"], 2):
            raise ValueError(f"{path}: document index has shape {index.shape}, expected ({info['num_docs']}, 2)")
        starts, lengths = index[:, 0].astype(np.int64), index[:, 1].astype(np.int64)
        if len(starts) and (starts[-1] + lengths[-1] != self.num_tokens or lengths.min() < 1):
            raise ValueError(f"{path}: document index does not cover the token stream; the directory is corrupt")
        return starts, lengths

    @property
    def documents(self) -> tuple[np.ndarray, np.ndarray]:
        """(starts, lengths) int64 arrays; each document's last token is EOS."""
        return self.starts, self.lengths

    @property
    def num_docs(self) -> int:
        return len(self.starts)

    def __len__(self) -> int:
        return self.num_docs

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of the split's stream (as int64), across shard edges if needed."""
        if not 0 <= start <= stop <= self.num_tokens:
            raise IndexError(f"token range [{start}, {stop}) outside [0, {self.num_tokens})")
        first = int(np.searchsorted(self.shard_offsets, start, side="right")) - 1
        pieces = []
        while start < stop:
            shard_start = int(self.shard_offsets[first])
            end = min(stop, int(self.shard_offsets[first + 1]))
            pieces.append(self.shards[first][start - shard_start:end - shard_start])
            start, first = end, first + 1
        if not pieces:
            return np.empty(0, dtype=np.int64)
        return np.concatenate(pieces).astype(np.int64)

    def document(self, index: int) -> np.ndarray:
        """Tokens of one document, its closing EOS included."""
        start = int(self.starts[index])
        return self.read(start, start + int(self.lengths[index]))

    def __repr__(self) -> str:
        return (f"TokenDataset({str(self.data_dir)!r}, split={self.split!r}, docs={self.num_docs}, "
                f"tokens={self.num_tokens}, vocab_size={self.vocab_size})")
