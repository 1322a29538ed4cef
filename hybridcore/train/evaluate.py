"""`hybridcore eval CKPT_OR_HF --data DATA_DIR`: loss and perplexity on a prepared data split.

The model can be a training run (its newest checkpoint), a checkpoint directory, a hybridcore model
directory (import-hf) or a Hugging Face Falcon-H1 directory. Batches are the data layer's fixed
validation batches (documents in stored order), so two models see exactly the same tokens.
"""

from __future__ import annotations

import json
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


def _kind(path: Path) -> str:
    from ..bridge.model_dir import is_model_dir
    from .checkpoint import CHECKPOINTS, MARKER

    if not path.is_dir():
        raise ValueError(f"{path}: no such directory")
    if (path / MARKER).is_file() or (path / CHECKPOINTS).is_dir():
        return "checkpoint"
    if is_model_dir(str(path)):
        return "model_dir"
    if (path / "config.json").is_file():
        return "hf"
    raise ValueError(f"{path}: not a run, checkpoint, hybridcore model or Hugging Face directory")


def model_config_of(path: str | Path):
    """(ModelConfig, train config dict or None) of any model source, without loading weights."""
    from ..config import ModelConfig

    path = Path(path)
    kind = _kind(path)
    if kind == "checkpoint":
        from .checkpoint import read_checkpoint_config, resolve_checkpoint

        saved = read_checkpoint_config(resolve_checkpoint(path))
        return ModelConfig.from_dict(saved["model"]), saved.get("train")
    if kind == "model_dir":
        from ..bridge.model_dir import read_model_config

        return read_model_config(str(path)), None
    from ..bridge import read_hf_config

    return read_hf_config(str(path)), None


def load_any_model(path: str | Path, device="cpu"):
    path = Path(path)
    kind = _kind(path)
    if kind == "checkpoint":
        from .checkpoint import load_model

        return load_model(path, device=device)
    if kind == "model_dir":
        from ..bridge.model_dir import load_model_dir

        return load_model_dir(str(path), dtype=torch.float32, device=device).eval()
    from ..bridge import load_hf

    return load_hf(str(path), dtype=torch.float32, device=device).eval()


def run(args) -> int:
    from ..data import TokenDataset, read_meta, validation_batches
    from .step import Batch, evaluate

    for name in ("batches", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    model_config, train_config = model_config_of(args.model)
    meta = read_meta(args.data)
    if meta["vocab_size"] > model_config.vocab_size:
        raise ValueError(f"vocab_size: {args.data} uses {meta['vocab_size']} tokens but the model's vocab_size is "
                         f"{model_config.vocab_size}")
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
    model = load_any_model(args.model, device=device)
    # the training run's own evaluation: fused head and loss, under autocast
    loss, tokens = evaluate(model, [Batch.from_loader(batch) for batch in batches],
                            autocast_dtype=torch.bfloat16 if dtype == "bf16" else None)
    perplexity = math.exp(loss) if loss < 700 else math.inf
    result = {"model": str(args.model), "data": str(args.data), "split": args.split, "loss": loss,
              "perplexity": perplexity, "tokens": tokens, "batches": len(batches), "batch_size": args.batch_size,
              "seq_len": seq_len}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.split} loss {loss:.4f}  perplexity {perplexity:.3f}  ({tokens:,} tokens: {len(batches)} "
              f"batches of {args.batch_size} x {seq_len} from {os.fspath(args.data)})")
    return 0
