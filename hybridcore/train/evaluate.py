"""`hybridcore eval CKPT_OR_HF --data DATA_DIR`: loss and perplexity on a prepared data split.

The model can be a training run (its newest checkpoint), a checkpoint directory, a hybridcore model
directory (import-hf) or a Hugging Face Falcon-H1 directory. Batches are the data layer's fixed
validation batches (documents in stored order), so two models see exactly the same tokens.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch


def add_arguments(parser) -> None:
    parser.add_argument("model", help="run directory, checkpoint directory, hybridcore model directory or "
                        "Hugging Face Falcon-H1 directory")
    parser.add_argument("--data", required=True, help="prepared data directory (`hybridcore prepare`)")
    parser.add_argument("--split", default="val", choices=("val", "train"), help="split to score (default val)")
    parser.add_argument("--batches", type=int, default=16, help="batches to score at most (default 16)")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per batch (default 8)")
    parser.add_argument("--seq-len", type=int, default=None,
                        help="tokens per row (default: the run's --seq-len for a run, else min(1024, max_seq_len))")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default=None,
                        help="autocast dtype (default: bf16 on cuda, fp32 on cpu)")
    parser.add_argument("--no-doc-masking", dest="doc_masking", action="store_false",
                        help="score packed rows as single sequences")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def check_same_tokenizer(source, data_dir: str | Path, meta: dict) -> None:
    """ValueError when --data was tokenized differently from the model's own data (`source`: an
    io.load.ModelSource): the same vocabulary size says nothing about the same tokens."""
    eos = source.config.eos_token_id
    if eos is not None and eos != meta["eos_id"]:
        raise ValueError(f"eos_token_id: {data_dir} ends documents with token {meta['eos_id']} but the model's "
                         f"eos_token_id is {eos}, so the data was tokenized for another model; prepare it with "
                         f"the model's tokenizer")
    theirs = _model_tokenizer(source)
    if theirs is not None and not _same_tokenizer(theirs, Path(data_dir), meta):
        raise ValueError(f"--data: {data_dir} was tokenized with {_tokenizer_name(Path(data_dir), meta)}, but the "
                         f"model was trained on {theirs}; prepare the data with the model's tokenizer "
                         f"(hybridcore prepare ... --tokenizer {theirs})")


def _model_tokenizer(source) -> Path | str | None:
    """The tokenizer the model was made with, when it can be told: 'byte', a tokenizer.json or None."""
    if source.kind == "hf":
        file = source.path / "tokenizer.json"
        return file if file.is_file() else None
    if source.kind == "checkpoint" and source.train is not None:
        data = source.train.get("data")
        candidates = [Path(data)] if data else [source.run_dir / "data"]
        for directory in candidates:
            meta_path = directory / "meta.json"
            if meta_path.is_file():
                from ..data import read_meta

                meta = read_meta(directory)
                return "byte" if meta["tokenizer"]["kind"] == "byte" else directory / meta["tokenizer"]["file"]
    return None


def _tokenizer_name(data_dir: Path, meta: dict) -> Path | str:
    info = meta["tokenizer"]
    return "byte" if info["kind"] == "byte" else data_dir / info.get("file", "tokenizer.json")


def _same_tokenizer(model_tokenizer: Path | str, data_dir: Path, meta: dict) -> bool:
    data_tokenizer = _tokenizer_name(data_dir, meta)
    if "byte" in (model_tokenizer, data_tokenizer):
        return model_tokenizer == data_tokenizer
    if Path(model_tokenizer).read_bytes() == Path(data_tokenizer).read_bytes():
        return True
    from tokenizers import Tokenizer  # saved by another version, perhaps: compare the vocabularies

    return Tokenizer.from_file(str(model_tokenizer)).get_vocab() == Tokenizer.from_file(str(data_tokenizer)).get_vocab()


def run(args) -> int:
    from ..data import TokenDataset, read_meta, validation_batches
    from ..errors import io_faults
    from ..io.json_codec import dumps
    from ..io.load import load_model, open_source
    from .step import Batch, evaluate

    for name in ("batches", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    source = open_source(args.model)
    model_config, train_config = source.config, source.train
    meta = read_meta(args.data)
    if meta["vocab_size"] > model_config.vocab_size:
        raise ValueError(f"vocab_size: {args.data} uses {meta['vocab_size']} tokens but the model's vocab_size is "
                         f"{model_config.vocab_size}")
    check_same_tokenizer(source, args.data, meta)
    seq_len = args.seq_len or (train_config or {}).get("seq_len") or min(1024, model_config.max_seq_len)
    if not 1 <= seq_len <= model_config.max_seq_len:
        raise ValueError(f"--seq-len {seq_len} must be in [1, max_seq_len={model_config.max_seq_len}]")
    if args.split not in meta["splits"] or meta["splits"][args.split]["num_tokens"] < seq_len + 1:
        raise ValueError(f"--data: the {args.split} split of {args.data} holds fewer than seq_len + 1 = "
                         f"{seq_len + 1} tokens (prepare it with a larger --val-fraction, or lower --seq-len)")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    dtype = args.dtype or ("bf16" if device == "cuda" else "fp32")

    dataset = TokenDataset(args.data, args.split)
    batches = validation_batches(dataset, args.batch_size, seq_len, max_batches=args.batches,
                                 doc_boundaries=args.doc_masking)
    with io_faults(f"evaluating {args.model}", kept="nothing was written"):
        model = load_model(source.checkpoint or source.path, device=device, dtype=torch.float32)
    # the training run's own evaluation: fused head and loss, under autocast
    loss, tokens = evaluate(model, [Batch.from_loader(batch) for batch in batches],
                            autocast_dtype=torch.bfloat16 if dtype == "bf16" else None)
    perplexity = math.exp(loss) if loss < 700 else math.inf
    result = {"model": str(args.model), "data": str(args.data), "split": args.split, "loss": loss,
              "perplexity": perplexity, "tokens": tokens, "batches": len(batches), "batch_size": args.batch_size,
              "seq_len": seq_len}
    if args.json:
        print(dumps(result))
    else:
        print(f"{args.split} loss {loss:.4f}  perplexity {perplexity:.3f}  ({tokens:,} tokens: {len(batches)} "
              f"batches of {args.batch_size} x {seq_len} from {os.fspath(args.data)})")
    return 0
