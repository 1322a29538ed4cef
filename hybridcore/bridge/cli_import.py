"""`hybridcore import-hf HF_DIR OUT_DIR`: a Hugging Face Falcon-H1 directory -> a hybridcore model directory."""

from __future__ import annotations

from .files import check_output_dir


def add_arguments(parser) -> None:
    parser.add_argument("hf_dir", help="Hugging Face Falcon-H1 directory (config.json + safetensors)")
    parser.add_argument("out_dir", help="hybridcore model directory to write (hybridcore.json + model.safetensors)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default=None,
                        help="convert the weights (default: keep the checkpoint's dtype)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")


def run(args) -> int:
    from .hf import load_hf
    from .model_dir import save_model_dir

    check_output_dir(args.out_dir, args.overwrite)  # before reading what may be many gigabytes
    model = load_hf(args.hf_dir, dtype=args.dtype)
    save_model_dir(model, args.out_dir, overwrite=args.overwrite)
    dtype = str(model.embed.weight.dtype).removeprefix("torch.")
    print(f"imported {args.hf_dir} -> {args.out_dir}: {model.num_parameters():,} parameters, {dtype}, "
          f"{model.config.num_layers // 2} Falcon-H1 layers")
    return 0
