"""The trainer's side of the data layer: which directory, does it fit the model, the loaders.

Without --data the run uses the default corpus (the Python standard library's .py files, byte
tokenizer), prepared once into RUN_DIR/data and reused by later runs and resumes in that directory.
"""

from __future__ import annotations

from pathlib import Path

from ..config import ModelConfig
from ..data import PackedLoader, TokenDataset, prepare, read_meta, validation_batches
from ..data.sources import DEFAULT_CORPUS_BYTES
from ..data.tokenizers import ByteTokenizer
from . import distributed

DEFAULT_DATA_SUBDIR = "data"
DEFAULT_CORPUS_MAX_BYTES = DEFAULT_CORPUS_BYTES  # module-level so tests can use a smaller corpus


def data_dir_for(config) -> Path:
    return Path(config.data) if config.data else Path(config.out) / DEFAULT_DATA_SUBDIR


def data_vocab(config) -> tuple[int, int, str]:
    """(vocab_size, eos_id, where) of the run's data, read without preparing or loading anything."""
    directory = data_dir_for(config)
    if config.data is None and not (directory / "meta.json").is_file():
        if directory.is_dir() and any(directory.iterdir()):
            raise ValueError(f"{directory} exists but is not a prepared data directory (no meta.json), so the "
                             f"default corpus cannot be prepared there; move it away, or give --data DATA_DIR")
        byte = ByteTokenizer()
        return byte.vocab_size, byte.eos_id, "the default corpus (byte tokenizer)"
    meta = read_meta(directory)  # ValueError naming the directory when it is not a prepared one
    return int(meta["vocab_size"]), int(meta["eos_id"]), str(directory)


def check_data_fits_model(config, model_config: ModelConfig) -> None:
    vocab_size, eos_id, where = data_vocab(config)
    if vocab_size > model_config.vocab_size:
        raise ValueError(f"vocab_size: {where} uses a vocabulary of {vocab_size} tokens but the model's "
                         f"vocab_size is {model_config.vocab_size}; pick data prepared with the model's "
                         f"tokenizer or raise it with --set vocab_size={vocab_size}")
    if model_config.eos_token_id is not None and model_config.eos_token_id != eos_id:
        raise ValueError(f"eos_token_id: {where} ends documents with token {eos_id} but the model's "
                         f"eos_token_id is {model_config.eos_token_id}; set --set eos_token_id={eos_id}")


def ensure_data(config, progress: bool = True) -> Path:
    """The run's data directory, preparing the default corpus there first if needed (rank 0 does it)."""
    directory = data_dir_for(config)
    if config.data is None and distributed.rank() == 0 and not (directory / "meta.json").is_file():
        print(f"preparing the default corpus into {directory} (once per run directory)")
        prepare(None, directory, tokenizer="byte", progress=progress, max_bytes=DEFAULT_CORPUS_MAX_BYTES)
    distributed.barrier()
    return directory


def no_validation_warning(directory: Path, config) -> str:
    """Why a run has no validation batches, and how to get them (train says it before the first step)."""
    split = read_meta(directory)["splits"].get("val")
    tokens = split["num_tokens"] if split else 0
    held = f"holds only {tokens} validation tokens" if tokens else "has no validation split"
    return (f"{directory} {held}, fewer than one row of --seq-len {config.seq_len} + 1, so this run reports no "
            f"validation loss; prepare the data with a larger --val-fraction to measure one")


def train_loader(directory: Path, config, rank: int, world_size: int) -> PackedLoader:
    dataset = TokenDataset(directory, "train")
    return PackedLoader(dataset, config.batch_size, config.seq_len, seed=config.seed,
                        doc_boundaries=config.doc_masking, rank=rank, world_size=world_size)


def val_batches(directory: Path, config, rank: int, world_size: int) -> list[dict]:
    """A fixed list of validation batches ([] when the split is missing or too small)."""
    meta = read_meta(directory)
    if "val" not in meta["splits"] or meta["splits"]["val"]["num_tokens"] == 0:
        return []
    dataset = TokenDataset(directory, "val")
    return validation_batches(dataset, config.batch_size, config.seq_len, max_batches=config.eval_batches,
                              doc_boundaries=config.doc_masking, rank=rank, world_size=world_size)
