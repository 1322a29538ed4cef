"""`hybridcore import-hf HF_DIR|ORG/NAME OUT_DIR`: a Hugging Face model directory or Hub id, of any supported
family, -> a hybridcore model directory."""

from __future__ import annotations


def add_arguments(parser) -> None:
    from .families import supported

    parser.add_argument("hf_dir", help=f"Hugging Face model directory (config.json + safetensors) or Hub id "
                        f"ORG/NAME (cache first); families: {supported()}")
    parser.add_argument("out_dir", help="hybridcore model directory to write (hybridcore.json + model.safetensors)")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default=None,
                        help="convert the weights (default: keep the checkpoint's dtype)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists (never HF_DIR, a "
                        "directory holding it, or a training run)")


def run(args) -> int:
    from ..errors import io_faults
    from ..io.files import check_output
    from ..io.load import TOKENIZER_FILES, open_source
    from ..layout import compact_layout
    from .hf import hf_family, load_hf
    from .hub import resolve_model_path
    from .model_dir import model_dir_names, save_model_dir

    # before reading what may be many gigabytes (the tokenizer's files are known once the source is found)
    check_output(args.out_dir, args.overwrite, inputs=[args.hf_dir], own=model_dir_names(TOKENIZER_FILES))
    source = resolve_model_path(args.hf_dir)
    tokenizer = open_source(source).tokenizer_files()
    with io_faults(f"importing {args.hf_dir} to {args.out_dir}",
                   kept=f"{args.out_dir} was not changed (the partial output was removed)"):
        model = load_hf(source, dtype=args.dtype)
        save_model_dir(model, args.out_dir, overwrite=args.overwrite, inputs=[source], extra_files=tokenizer)
    dtype = str(model.embed.weight.dtype).removeprefix("torch.")
    print(f"imported {args.hf_dir} -> {args.out_dir}: {hf_family(source).name}, layout "
          f"{compact_layout(model.config.layout)}, {model.num_parameters():,} parameters, {dtype}")
    return 0
