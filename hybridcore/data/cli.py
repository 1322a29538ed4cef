"""`hybridcore prepare INPUT... --out DATA_DIR`: tokenize documents into a data directory."""

from __future__ import annotations

import argparse
import sys

from .sources import DEFAULT_CORPUS_BYTES


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="text/JSONL/JSON/Parquet files or directories (default: the Python standard "
                             "library's own sources, a small corpus that is always there)")
    parser.add_argument("--out", required=True, metavar="DATA_DIR", help="directory to create")
    parser.add_argument("--tokenizer", default="byte", metavar="PATH|byte",
                        help="'byte' (built in, 258 ids) or a tokenizer.json / directory holding one")
    parser.add_argument("--eos-token", default=None, help="end-of-document token of --tokenizer, if not found")
    parser.add_argument("--train-tokenizer", action="store_true", help="train a byte-level BPE on the inputs")
    parser.add_argument("--vocab-size", type=int, default=None, help="vocabulary size for --train-tokenizer")
    parser.add_argument("--text-field", default="text", help="JSON field / Parquet column holding the text")
    parser.add_argument("--val-fraction", type=float, default=0.01, help="share of documents held out")
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation choice")
    parser.add_argument("--workers", type=int, default=None, help="tokenizing processes (default min(4, cores))")
    parser.add_argument("--max-bytes", type=int, default=DEFAULT_CORPUS_BYTES,
                        help="size cap of the default corpus (ignored when INPUTs are given)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing DATA_DIR")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_prepare(args: argparse.Namespace) -> int:
    from ..errors import io_faults
    from .prepare import prepare

    kept = f"{args.out} was not changed (the partial output was removed)"
    try:
        with io_faults(f"preparing {args.out}", kept=kept):
            info = prepare(args.inputs or None, args.out, tokenizer=args.tokenizer, text_field=args.text_field,
                           val_fraction=args.val_fraction, seed=args.seed, workers=args.workers,
                           train_tokenizer=args.train_tokenizer, vocab_size=args.vocab_size,
                           progress=not args.quiet, overwrite=args.overwrite, eos_token=args.eos_token,
                           max_bytes=args.max_bytes)
    except ValueError as error:
        print(f"hybridcore prepare: error: {error}", file=sys.stderr)
        return 2
    print(f"source: {info.source}")
    for split in ("train", "val"):
        print(f"{split}: {info.num_docs[split]:,} documents, {info.num_tokens[split]:,} tokens")
    print(f"vocab {info.vocab_size:,} ({info.tokenizer}), eos {info.eos_id}, {info.dtype} -> {info.out_dir}")
    return 0


# The names hybridcore/cli.py looks for in every command module.
add_arguments = add_prepare_arguments
run = run_prepare
