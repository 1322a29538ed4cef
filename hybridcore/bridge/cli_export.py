"""`hybridcore export-hf SRC OUT_HF_DIR [--family NAME]`: a hybridcore model directory or training checkpoint
-> a Hugging Face directory that transformers loads, in the format of the first family that holds the model's
layout and switches (or the one named)."""

from __future__ import annotations

import sys

from .safetensors_io import parse_size


def add_arguments(parser) -> None:
    parser.add_argument("src", help="hybridcore model directory (from import-hf), or a training run or "
                        "checkpoint directory")
    parser.add_argument("out_hf_dir", help="Hugging Face directory to write")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_HF_DIR if it exists (never SRC, a "
                        "directory holding it, or a training run)")
    parser.add_argument("--family", default=None, metavar="NAME",
                        help="write this family's format (falcon_h1, nemotron_h, granitemoehybrid, bamba; default: "
                        "the first whose format holds the model), or say why it cannot")
    parser.add_argument("--max-shard-size", default="5GB",
                        help="split the safetensors above this size (default 5GB; e.g. 500MB, 2GiB)")


def run(args) -> int:
    from ..errors import io_faults
    from ..io.files import check_output
    from ..io.load import load_model, open_source
    from .families import family_named
    from .hf import hf_output_names, save_hf

    limit = parse_size(args.max_shard_size, "--max-shard-size")
    requested = family_named(args.family) if args.family else None  # a typo fails before any reading
    tokenizer = open_source(args.src).tokenizer_files()
    # before reading a whole model
    check_output(args.out_hf_dir, args.overwrite, inputs=[args.src], own=hf_output_names(tokenizer))
    with io_faults(f"exporting {args.src} to {args.out_hf_dir}",
                   kept=f"{args.out_hf_dir} was not changed (the partial output was removed)"):
        model = load_model(args.src, device="cpu")
        family = save_hf(model, args.out_hf_dir, max_shard_bytes=limit, overwrite=args.overwrite,
                         inputs=[args.src], family=requested, extra_files=tokenizer,
                         progress=sys.stderr.isatty())
    with_tokenizer = (f", with {', '.join(f.name for f in tokenizer)}" if tokenizer else
                      " (no Hugging Face tokenizer goes with it: the byte tokenizer, or none found)")
    print(f"exported {args.src} -> {args.out_hf_dir}: {family.name} ({family.architecture}), "
          f"{model.num_parameters():,} parameters{with_tokenizer}")
    return 0
