"""`hybridcore export-hf SRC OUT_HF_DIR`: a hybridcore model directory or training checkpoint -> a Hugging
Face Falcon-H1 directory that transformers loads."""

from __future__ import annotations

from .files import check_output_dir
from .safetensors_io import parse_size


def add_arguments(parser) -> None:
    parser.add_argument("src", help="hybridcore model directory (from import-hf), or a training run or "
                        "checkpoint directory")
    parser.add_argument("out_hf_dir", help="Hugging Face directory to write")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_HF_DIR if it exists")
    parser.add_argument("--max-shard-size", default="5GB",
                        help="split the safetensors above this size (default 5GB; e.g. 500MB, 2GiB)")


def load_source(src: str):
    """A model from a hybridcore model directory, or from a training run/checkpoint directory."""
    import os

    from .model_dir import is_model_dir, load_model_dir

    if not os.path.isdir(src):
        raise ValueError(f"{src} is not a directory (expected a hybridcore model directory or a training "
                         f"run/checkpoint directory)")
    if is_model_dir(src):
        return load_model_dir(src, device="cpu")
    from ..train.checkpoint import load_model

    return load_model(src, device="cpu")


def run(args) -> int:
    from .hf import save_hf

    limit = parse_size(args.max_shard_size, "--max-shard-size")
    check_output_dir(args.out_hf_dir, args.overwrite)
    model = load_source(args.src)
    save_hf(model, args.out_hf_dir, max_shard_bytes=limit, overwrite=args.overwrite)
    print(f"exported {args.src} -> {args.out_hf_dir}: {model.num_parameters():,} parameters")
    return 0
