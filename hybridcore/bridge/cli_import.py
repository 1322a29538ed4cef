"""`hybridcore import-hf HF_DIR OUT_DIR`: a Hugging Face Falcon-H1 directory -> a hybridcore model directory."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("hf_dir", help="Hugging Face Falcon-H1 directory (config.json + safetensors)")
    parser.add_argument("out_dir", help="hybridcore model directory to write (hybridcore.json + model.safetensors)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default=None,
                        help="convert the weights (default: keep the checkpoint's dtype)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists (never HF_DIR, a "
                        "directory holding it, or a training run)")


def run(args) -> int:
    from ..errors import io_faults
    from ..io.files import check_output
    from .hf import load_hf
    from .model_dir import save_model_dir

    check_output(args.out_dir, args.overwrite, inputs=[args.hf_dir])  # before reading what may be many gigabytes
    with io_faults(f"importing {args.hf_dir} to {args.out_dir}",
                   kept=f"{args.out_dir} was not changed (the partial output was removed)"):
        model = load_hf(args.hf_dir, dtype=args.dtype)
        save_model_dir(model, args.out_dir, overwrite=args.overwrite, inputs=[args.hf_dir])
    dtype = str(model.embed.weight.dtype).removeprefix("torch.")
    print(f"imported {args.hf_dir} -> {args.out_dir}: {model.num_parameters():,} parameters, {dtype}, "
          f"{model.config.num_layers // 2} Falcon-H1 layers")
    return 0
