"""`prepare`: documents -> token shards + document index + tokenizer + meta.json, written atomically.

Two passes keep the validation split exact and memory flat whatever the corpus size:
1. tokenize every document (in parallel, order kept), appending EOS, into one temporary stream;
2. once the document count is known, pick the validation documents with the seed and copy each
   split's documents into its shards.
Everything is written into a staging directory beside `out_dir` and renamed into place at the end
(hybridcore.io.files.atomic_directory), so a failure never leaves a half-written `out_dir`, and
`overwrite=True` replaces the old one only once the new one is complete, and never when it is, holds or
lies inside an input or a training run.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tqdm import tqdm

from ..io.files import atomic_directory, check_output
from ..io.json_codec import write_json
from . import sources
from .dataset import FORMAT, FORMAT_VERSION
from .tokenizers import ByteTokenizer, HFTokenizer, load_tokenizer, train_bpe

DEFAULT_SHARD_TOKENS = 1 << 28  # 256 Mi tokens: 512 MB shards at uint16
CHUNK_DOCS = 256  # documents per worker task
CHUNK_CHARS = 1 << 20  # ... or fewer, once a task holds this much text
# What a data directory holds (--overwrite replaces a directory holding nothing else)
DATA_DIR_NAMES = ("meta.json", "tokenizer.json", "byte_tokenizer.json", "train_*.bin", "val_*.bin", "train_docs.npy",
                  "val_docs.npy")


@dataclass
class DatasetInfo:
    """What `prepare` wrote (also the content of meta.json's counts)."""

    out_dir: str
    vocab_size: int
    eos_id: int
    dtype: str
    tokenizer: str
    num_docs: dict = field(default_factory=dict)  # split -> documents
    num_tokens: dict = field(default_factory=dict)  # split -> tokens (EOS included)
    source: str = ""


def token_dtype(vocab_size: int) -> np.dtype:
    # every id is < vocab_size, so 2**16 entries still fit uint16
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


# --- tokenizing workers -------------------------------------------------------------------------------
_worker_tokenizer = None


def _init_worker(spec: tuple) -> None:
    global _worker_tokenizer
    # Ctrl-C reaches the whole process group: the parent alone handles it (and ends the pool); a worker
    # dying of it mid-task left the parent waiting on the pool for its result
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_tokenizer = _tokenizer_from_spec(spec)


def _tokenizer_from_spec(spec: tuple):
    # A plain tuple crosses process boundaries cheaply; each worker builds its own tokenizer.
    return ByteTokenizer() if spec[0] == "byte" else HFTokenizer(spec[1], eos_token=spec[2])


def _tokenize_chunk(texts: list[str], tokenizer=None) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated ids of `texts`, EOS after each, and each document's length (EOS included)."""
    tokenizer = tokenizer or _worker_tokenizer
    dtype = token_dtype(tokenizer.vocab_size)
    if isinstance(tokenizer, ByteTokenizer):
        encoded = [tokenizer.encode_array(text) for text in texts]
    else:
        encoded = [np.asarray(ids, dtype=np.int64) for ids in tokenizer.encode_batch(texts)]
    eos = np.array([tokenizer.eos_id], dtype=dtype)
    pieces = [piece for ids in encoded for piece in (ids.astype(dtype, copy=False), eos)]
    lengths = np.array([len(ids) + 1 for ids in encoded], dtype=np.int64)
    return np.concatenate(pieces) if pieces else np.empty(0, dtype=dtype), lengths


def _chunks(documents: Iterable[str]) -> Iterator[list[str]]:
    chunk, chars = [], 0
    for doc in documents:
        chunk.append(doc)
        chars += len(doc)
        if len(chunk) >= CHUNK_DOCS or chars >= CHUNK_CHARS:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


def _tokenized(documents: Iterable[str], spec: tuple, workers: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Tokenized chunks in input order; at most a few chunks in flight so memory stays bounded."""
    if workers <= 1:
        tokenizer = _tokenizer_from_spec(spec)
        for chunk in _chunks(documents):
            yield _tokenize_chunk(chunk, tokenizer)
        return
    # fork keeps start-up instant (spawn would re-import torch in every worker); fall back elsewhere.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    with context.Pool(workers, initializer=_init_worker, initargs=(spec,)) as pool:
        pending = collections.deque()
        for chunk in _chunks(documents):
            pending.append(pool.apply_async(_tokenize_chunk, (chunk,)))
            if len(pending) >= 4 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


# --- split writing -------------------------------------------------------------------------------------
class _ShardWriter:
    """Appends tokens to `<split>_000.bin`, `<split>_001.bin`, ... of at most `shard_tokens` each."""

    def __init__(self, directory: Path, split: str, shard_tokens: int):
        self.directory, self.split, self.shard_tokens = directory, split, shard_tokens
        self.shards: list[dict] = []
        self.handle = None
        self.total = 0

    def write(self, tokens: np.ndarray) -> None:
        while len(tokens):
            if self.handle is None or self.shards[-1]["num_tokens"] == self.shard_tokens:
                self._next_shard()
            room = self.shard_tokens - self.shards[-1]["num_tokens"]
            piece, tokens = tokens[:room], tokens[room:]
            self.handle.write(np.ascontiguousarray(piece).tobytes())
            self.shards[-1]["num_tokens"] += len(piece)
            self.total += len(piece)

    def _next_shard(self) -> None:
        self.close()
        name = f"{self.split}_{len(self.shards):03d}.bin"
        self.handle = open(self.directory / name, "wb")
        self.shards.append({"file": name, "num_tokens": 0})

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def choose_validation(num_docs: int, val_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of validation documents: round(fraction * n) of them, at least 1 when n >= 2 and
    fraction > 0, never all; which ones depends only on (num_docs, fraction, seed)."""
    count = 0
    if val_fraction > 0 and num_docs >= 2:
        count = min(max(1, round(num_docs * val_fraction)), num_docs - 1)
    mask = np.zeros(num_docs, dtype=bool)
    mask[np.random.default_rng(seed).permutation(num_docs)[:count]] = True
    return mask


def _write_split(stream: np.ndarray, starts: np.ndarray, lengths: np.ndarray, keep: np.ndarray,
                 directory: Path, split: str, shard_tokens: int, copy_tokens: int = 1 << 24) -> dict:
    """Copy the documents selected by `keep` from `stream` into the split's shards and index."""
    writer = _ShardWriter(directory, split, shard_tokens)
    # Consecutive kept documents form runs; copying run by run keeps the copy sequential and fast.
    edges = np.flatnonzero(np.diff(np.concatenate([[0], keep.astype(np.int8), [0]])))
    for first, last in zip(edges[0::2], edges[1::2]):
        begin, end = int(starts[first]), int(starts[last - 1] + lengths[last - 1])
        for offset in range(begin, end, copy_tokens):
            writer.write(stream[offset:min(end, offset + copy_tokens)])
    writer.close()
    kept = lengths[keep]
    index = np.stack([np.cumsum(kept) - kept, kept], axis=1).astype(np.int64).reshape(-1, 2)
    np.save(directory / f"{split}_docs.npy", index)
    assert writer.total == int(kept.sum())
    return {"shards": writer.shards, "documents": f"{split}_docs.npy", "num_docs": int(len(kept)),
            "num_tokens": writer.total}


# --- the entry point -----------------------------------------------------------------------------------
def prepare(inputs: Iterable[str | Path] | None, out_dir: str | Path, tokenizer: str | Path = "byte",
            text_field: str = "text", val_fraction: float = 0.01, seed: int = 0, workers: int | None = None,
            train_tokenizer: bool = False, vocab_size: int | None = None,
            shard_tokens: int = DEFAULT_SHARD_TOKENS, progress: bool = True, overwrite: bool = False,
            eos_token: str | None = None, max_bytes: int | None = sources.DEFAULT_CORPUS_BYTES) -> DatasetInfo:
    """Tokenize `inputs` (files/directories; None = the default corpus, capped at `max_bytes`) into `out_dir`.

    `train_tokenizer=True` first trains a byte-level BPE of `vocab_size` on the same documents."""
    out_dir = Path(out_dir)
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction: must be in [0, 1), got {val_fraction}")
    if shard_tokens < 1:
        raise ValueError(f"shard_tokens: must be positive, got {shard_tokens}")
    if train_tokenizer and not vocab_size:
        raise ValueError("vocab_size: --train-tokenizer needs --vocab-size N")
    if train_tokenizer and str(tokenizer) != "byte":
        raise ValueError(f"tokenizer: give either --tokenizer {tokenizer} or --train-tokenizer, not both")
    if inputs is None:
        files = sources.default_corpus_files(max_bytes)
        source = sources.default_corpus_description(files)
        read = [sources.stdlib_directory()]
    else:
        files = sources.expand_inputs(inputs)  # raises ValueError naming a bad path, before any writing
        source = ", ".join(str(p) for p in inputs)
        read = list(inputs)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: exists and is not a directory")
    check_output(out_dir, overwrite, read, DATA_DIR_NAMES)
    workers = min(4, os.cpu_count() or 1) if workers is None else workers

    def documents() -> Iterator[str]:
        for path in files:
            yield from sources.iter_file(path, text_field)

    with atomic_directory(out_dir, overwrite, read, DATA_DIR_NAMES) as tmp:
        if train_tokenizer:
            tok = train_bpe(documents(), vocab_size, tmp / "tokenizer.json", show_progress=progress)
        else:
            tok = load_tokenizer(tokenizer, eos_token=eos_token)
        info = _prepare_into(tmp, documents(), tok, val_fraction, seed, workers, shard_tokens, progress)
        if sum(info["num_docs"].values()) == 0:
            raise ValueError(f"{source}: no documents found (every input was empty)")
        meta = _write_tokenizer_and_meta(tmp, tok, info, source, text_field, val_fraction, seed)
    return DatasetInfo(out_dir=str(out_dir), vocab_size=meta["vocab_size"], eos_id=meta["eos_id"],
                       dtype=meta["dtype"], tokenizer=meta["tokenizer"]["kind"], num_docs=info["num_docs"],
                       num_tokens=info["num_tokens"], source=source)


def _prepare_into(tmp: Path, documents: Iterator[str], tok, val_fraction: float, seed: int, workers: int,
                  shard_tokens: int, progress: bool) -> dict:
    spec = ("byte",) if isinstance(tok, ByteTokenizer) else ("hf", str(tok.path), tok.eos_token)
    dtype = token_dtype(tok.vocab_size)
    stream_path, all_lengths = tmp / "all.tmp", []
    bar = tqdm(desc="tokenizing", unit="doc", disable=not progress, dynamic_ncols=True)
    with open(stream_path, "wb") as stream, bar:
        total = 0
        for tokens, lengths in _tokenized(documents, spec, workers):
            stream.write(tokens.astype(dtype, copy=False).tobytes())
            all_lengths.append(lengths)
            total += len(tokens)
            bar.update(len(lengths))
            bar.set_postfix(tokens=f"{total:,}", refresh=False)
    lengths = np.concatenate(all_lengths) if all_lengths else np.empty(0, dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    is_val = choose_validation(len(lengths), val_fraction, seed)
    # np.memmap cannot map an empty file; an empty stream means no documents, reported by the caller.
    stream = np.memmap(stream_path, dtype=dtype, mode="r") if total else np.empty(0, dtype=dtype)
    splits = {name: _write_split(stream, starts, lengths, keep, tmp, name, shard_tokens)
              for name, keep in (("train", ~is_val), ("val", is_val))}
    del stream
    stream_path.unlink()
    return {"splits": splits, "dtype": dtype.name,
            "num_docs": {name: s["num_docs"] for name, s in splits.items()},
            "num_tokens": {name: s["num_tokens"] for name, s in splits.items()}}


def _write_tokenizer_and_meta(tmp: Path, tok, info: dict, source: str, text_field: str, val_fraction: float,
                              seed: int) -> dict:
    if isinstance(tok, ByteTokenizer):
        tok.save(tmp)
        tokenizer_info = {"kind": "byte", "eos_token": tok.eos_token}
    else:
        if tok.path.resolve() != (tmp / "tokenizer.json").resolve():
            shutil.copyfile(tok.path, tmp / "tokenizer.json")
        origin = "trained by prepare" if tok.path.parent == tmp else tok.name
        tokenizer_info = {"kind": "hf", "file": "tokenizer.json", "eos_token": tok.eos_token, "origin": origin}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "vocab_size": tok.vocab_size,
            "eos_id": tok.eos_id, "dtype": info["dtype"], "tokenizer": tokenizer_info, "splits": info["splits"],
            "num_docs": info["num_docs"], "num_tokens": info["num_tokens"], "source": source,
            "text_field": text_field, "val_fraction": val_fraction, "seed": seed}
    write_json(tmp / "meta.json", meta)
    return meta
