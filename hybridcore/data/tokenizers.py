"""Tokenizers: a built-in byte tokenizer (no files needed) and a wrapper over Hugging Face `tokenizers`.

Both expose the same small surface: `name`, `vocab_size`, `eos_id`, `encode`, `decode`, `encode_batch`,
`encode_array` (numpy, the fast path used by `prepare`) and `save(directory)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from ..io.json_codec import write_json

BYTE_MARKER_FILE = "byte_tokenizer.json"  # what ByteTokenizer.save writes, so a directory says "byte"
HF_FILE = "tokenizer.json"
BPE_EOS_TOKEN = "<|endoftext|>"
# Tried in order when no --eos-token is given.
EOS_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>")


class ByteTokenizer:
    """ids 0..255 are the UTF-8 bytes, then `<|eos|>` = 256 and `<|pad|>` = 257."""

    name = "byte"
    kind = "byte"
    eos_token = "<|eos|>"
    eos_id = 256
    pad_id = 257
    vocab_size = 258

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_array(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def decode(self, ids: Iterable[int]) -> str:
        data = bytes(int(i) for i in ids if 0 <= int(i) < 256)  # special tokens are skipped
        return data.decode("utf-8", errors="replace")

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / BYTE_MARKER_FILE
        write_json(path, {"kind": "byte", "vocab_size": self.vocab_size, "eos_id": self.eos_id}, indent=None)
        return path

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=258)"


class HFTokenizer:
    """A `tokenizers.Tokenizer` from a tokenizer.json file (or a directory holding one)."""

    kind = "hf"

    def __init__(self, path: str | Path, eos_token: str | None = None):
        from tokenizers import Tokenizer

        path = Path(path)
        if path.is_dir():
            path = path / HF_FILE
        if not path.is_file():
            raise ValueError(f"tokenizer: no tokenizer file at {path}")
        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as error:  # the Rust side raises a bare Exception
            raise ValueError(f"tokenizer: cannot read {path}: {error}") from error
        self.path = path
        self.name = str(path)
        self.vocab_size = self.tokenizer.get_vocab_size()
        self.eos_token, self.eos_id = self._find_eos(eos_token)

    def _find_eos(self, eos_token: str | None) -> tuple[str, int]:
        candidates = (eos_token,) if eos_token else EOS_CANDIDATES
        for token in candidates:
            token_id = self.tokenizer.token_to_id(token)
            if token_id is not None:
                return token, token_id
        if eos_token:
            raise ValueError(f"tokenizer {self.path}: eos token {eos_token!r} is not in its vocabulary")
        raise ValueError(f"tokenizer {self.path}: found none of the end-of-text tokens {list(EOS_CANDIDATES)}; "
                         "name yours with --eos-token")

    def encode(self, text: str) -> list[int]:
        # No post-processor templates (BOS etc.): prepare appends exactly one EOS per document itself.
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.encode(text), dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / HF_FILE
        self.tokenizer.save(str(path))
        return path

    def __repr__(self) -> str:
        return f"HFTokenizer({self.name!r}, vocab_size={self.vocab_size}, eos={self.eos_token!r})"


AnyTokenizer = ByteTokenizer | HFTokenizer  # both share one surface


def train_bpe(texts: Iterable[str], vocab_size: int, out_path: str | Path, show_progress: bool = False) -> HFTokenizer:
    """Train a byte-level BPE (GPT-2 style) with `<|endoftext|>` as its only special token.

    `out_path` is the tokenizer.json to write (or a directory to write it into)."""
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    minimum = 256 + 1  # every byte plus the special token
    if vocab_size is None or int(vocab_size) < minimum:
        raise ValueError(f"vocab_size: a byte-level BPE needs at least {minimum} entries, got {vocab_size}")
    out_path = Path(out_path)
    if out_path.is_dir():
        out_path = out_path / HF_FILE
    tokenizer = RustTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=int(vocab_size), special_tokens=[BPE_EOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=show_progress)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_path))
    return HFTokenizer(out_path, eos_token=BPE_EOS_TOKEN)


def load_tokenizer(spec: str | Path, eos_token: str | None = None) -> AnyTokenizer:
    """"byte" -> ByteTokenizer; a tokenizer.json, a directory holding one, or a prepared data directory."""
    if str(spec) == "byte":
        return ByteTokenizer()
    path = Path(spec)
    if path.is_dir() and (path / "meta.json").is_file():
        return load_tokenizer_from_data_dir(path)
    if path.is_dir() and (path / BYTE_MARKER_FILE).is_file() and not (path / HF_FILE).is_file():
        return ByteTokenizer()
    if not path.exists():
        raise ValueError(f"tokenizer: {spec} is neither 'byte' nor an existing path")
    return HFTokenizer(path, eos_token=eos_token)


def load_tokenizer_from_data_dir(data_dir: str | Path) -> AnyTokenizer:
    """The tokenizer a `prepare` run saved next to its shards."""
    from .dataset import read_meta

    data_dir = Path(data_dir)
    meta = read_meta(data_dir)
    info = meta["tokenizer"]
    if info["kind"] == "byte":
        tokenizer = ByteTokenizer()
    else:
        tokenizer = HFTokenizer(data_dir / info.get("file", HF_FILE), eos_token=info.get("eos_token"))
    if tokenizer.vocab_size != meta["vocab_size"] or tokenizer.eos_id != meta["eos_id"]:
        raise ValueError(f"{data_dir}: tokenizer (vocab {tokenizer.vocab_size}, eos {tokenizer.eos_id}) does not "
                         f"match meta.json (vocab {meta['vocab_size']}, eos {meta['eos_id']})")
    return tokenizer
