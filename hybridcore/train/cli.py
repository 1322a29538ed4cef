"""`hybridcore train`: flags -> TrainConfig -> train().

Every flag defaults to None here, so "given on the command line" can be told apart from "left at its
default": a resumed run keeps its saved settings and applies only the flags given again.
"""

from __future__ import annotations

import argparse
import os
import sys

from .config import (CHECKPOINT_POLICIES, COMPILE_MODES, DEVICES, DTYPES, FP8_RECIPES, MIXER_MODES, PARALLEL_FIELDS,
                     PIPELINE_SCHEDULES, SCHEDULES, TrainConfig)

_DEFAULTS = TrainConfig()


def _flag(parser, name: str, type=None, help: str = "", **kwargs) -> None:
    dest = kwargs.get("dest") or name.lstrip("-").replace("-", "_")
    default = getattr(_DEFAULTS, dest, getattr(_DEFAULTS.parallel, dest, None))
    shown = f" (default {default})" if default not in (None, "", [], "default") else ""  # not "(default default)"
    if "choices" not in kwargs:
        kwargs.setdefault("metavar", {int: "N", float: "X"}.get(type, "TEXT"))
    parser.add_argument(name, type=type, default=None, help=help + shown, **kwargs)


def add_arguments(parser) -> None:
    model = parser.add_argument_group("model")
    _flag(model, "--preset", metavar="NAME", help="model preset (see `hybridcore info`); not needed with "
          "--init-hf or --resume")
    model.add_argument("--set", dest="overrides", action="append", default=None, metavar="KEY=VALUE",
                       help="override a model config field (repeatable)")
    _flag(model, "--init-hf", metavar="HF_DIR", help="start from the weights of a Hugging Face model directory or Hub "
          "id ORG/NAME (or a hybridcore model directory from import-hf) instead of a random init")

    run = parser.add_argument_group("run")
    run.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory: metrics.jsonl, run_config.json, checkpoints/")
    _flag(run, "--data", metavar="DATA_DIR", help="prepared data directory (`hybridcore prepare`); default: the built-in corpus, "
          "prepared into OUT/data")
    _flag(run, "--steps", type=int, help="optimizer steps in total")
    _flag(run, "--seed", type=int, help="seed of the init and the data order")
    _flag(run, "--batch-size", type=int, help="rows per micro-batch, all processes together (the global "
          "batch: the parallel layout splits it)")
    _flag(run, "--seq-len", type=int, help="tokens per row")
    _flag(run, "--grad-accum", type=int, help="micro-batches per optimizer step")
    run.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint in OUT "
                     "(its saved settings apply; flags given again override those that may change)")
    _flag(run, "--resume-from", metavar="STEP|PATH", help="continue from this checkpoint of OUT instead (implies "
          "--resume): later checkpoints and metrics rows are moved to OUT/superseded-*, not deleted")

    optim = parser.add_argument_group("optimizer")
    _flag(optim, "--lr", type=float, help="peak learning rate")
    _flag(optim, "--min-lr-ratio", type=float, help="lowest lr as a fraction of --lr")
    _flag(optim, "--warmup", type=int, help="linear warmup steps")
    _flag(optim, "--schedule", choices=SCHEDULES, help="cosine, warmup-stable-decay, or Falcon-H1's power-law "
          "decay of lr and weight decay")
    _flag(optim, "--decay-fraction", type=float, help="wsd: fraction of the steps spent decaying")
    _flag(optim, "--power-exponent", type=float, help="power: lr and wd fall as (step/warmup)^-exponent")
    _flag(optim, "--weight-decay", type=float, help="AdamW weight decay (matrices only)")
    _flag(optim, "--clip", type=float, help="gradient-norm clipping threshold, 0 disables")

    ckpt = parser.add_argument_group("checkpoints and evaluation")
    _flag(ckpt, "--save-every", type=int, help="checkpoint every K steps (0: only at the end)")
    _flag(ckpt, "--keep-last", type=int, help="keep the newest K checkpoints")
    _flag(ckpt, "--eval-every", type=int, help="validation loss every K steps (0: only at the end)")
    _flag(ckpt, "--eval-batches", type=int, help="validation batches per evaluation")

    execution = parser.add_argument_group("execution")
    _flag(execution, "--device", choices=DEVICES, help="default: cuda when available")
    _flag(execution, "--dtype", choices=DTYPES, help="compute dtype: autocast over fp32 master weights, in every "
          "layout (default: bf16 on cuda, fp32 on cpu)")
    execution.add_argument("--activation-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                           help="recompute each layer's activations in backward (--no-activation-checkpointing "
                           "turns it off again on --resume)")
    _flag(execution, "--checkpoint-layers", type=int, metavar="N",
          help="with --activation-checkpointing, recompute only the first N layers of the layout (less "
               "recomputation where memory allows)")
    _flag(execution, "--checkpoint-policy", choices=CHECKPOINT_POLICIES,
          help="with --activation-checkpointing: full (default) recomputes each checkpointed layer's forward; "
               "selective keeps the outputs of its matrix products, attention and collectives and recomputes "
               "the rest (more memory, less recomputation)")
    execution.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                           help="torch.compile each layer (default: on with CUDA, where a layer that fails to "
                           "compile runs eagerly with a warning; off on CPU). --compile makes a compile failure stop "
                           "the run, --no-compile trains eagerly")
    _flag(execution, "--compile-mode", choices=COMPILE_MODES,
          help="torch.compile mode (implies --compile); reduce-overhead adds CUDA graphs, one process only "
               "(CUDA only: on CPU it is the default mode). Default: reduce-overhead for one CUDA process without "
               "--activation-checkpointing or --fp8, else default")
    _flag(execution, "--compile-cache-dir", metavar="DIR",
          help="where Inductor's and Triton's caches persist, so a resume or a second run with the same shapes "
               "starts fast (default $HYBRIDCORE_COMPILE_CACHE or ~/.cache/hybridcore/compile)")
    _flag(execution, "--fp8", choices=FP8_RECIPES,
          help="float8 matmuls through torchao (pip install 'hybridcore[fp8]'); the LM head and small linears "
               "stay in bf16, checkpoints keep fp32 weights")
    _flag(execution, "--fp8-min-size", type=int,
          help="with --fp8, linears with a weight dimension below N stay in bf16 (under --tp: of the rank's slice)")
    execution.add_argument("--no-doc-masking", dest="doc_masking", action="store_false", default=None,
                           help="let attention and the Mamba state cross document boundaries in a packed row")
    _flag(execution, "--loss-chunk", type=int, help="tokens per logits chunk in the loss (0: automatic)")
    execution.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None,
                           help="also log to OUT/tensorboard")
    execution.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                           help="a progress bar (the default); --no-progress for logs and batch jobs")
    _flag(execution, "--peak-flops", type=float, help="peak FLOP/s per device for MFU")
    _flag(execution, "--max-bad-steps", type=int, help="stop after this many non-finite steps in a row")
    _flag(execution, "--dist-timeout", type=float, metavar="SECONDS", help="under torchrun, how long a collective "
          "waits for the other ranks before the run stops, naming the rank that stopped answering")
    _flag(execution, "--sample-tokens", type=int, help="greedy sample length printed at the end (0: none)")
    _flag(execution, "--sample-prompt", help="prompt of the final sample")

    parallel = parser.add_argument_group(
        "parallel layout", "Under torchrun (torchrun --nproc-per-node N -m hybridcore train ...): the product "
        "pp x dp-replicate x dp-shard x cp x tp is N. The global batch (--batch-size rows) is the same on any "
        "layout, so are the losses; checkpoints resume under any layout and export from any.")
    _flag(parallel, "--tp", type=int, help="tensor parallel: heads and channels split over N ranks")
    _flag(parallel, "--pp", type=int, help="pipeline stages (at the layout's '|' marks, else balanced by FLOPs)")
    _flag(parallel, "--cp", type=int, help="context parallel: the sequence split over N ranks (zigzag)")
    _flag(parallel, "--dp-shard", type=int, help="FSDP2: parameters, gradients and optimizer state sharded over N "
          "ranks; -1: every rank the other flags leave")
    _flag(parallel, "--dp-replicate", type=int, help="replicated data parallel over the shards (HSDP)")
    parallel.add_argument("--sequence-parallel", action=argparse.BooleanOptionalAction, default=None,
                          help="with --tp: split norms and the residual stream along the sequence (default on)")
    _flag(parallel, "--pp-schedule", choices=PIPELINE_SCHEDULES, help="pipeline schedule")
    _flag(parallel, "--microbatches", dest="pp_microbatches", type=int, help="pipeline microbatches per data-parallel rank's rows "
          "(default 2 x pp x stages per rank; --grad-accum multiplies them)")
    _flag(parallel, "--pp-stages-per-rank", type=int, help="pipeline stages each rank holds (interleaved_1f1b)")
    parallel.add_argument("--mixer-parallel", nargs="?", const="split", default=None, choices=MIXER_MODES,
                          help="with an even --tp: each P layer's attention on one half of the tp ranks and its "
                          "Mamba-2 on the other, at the same time; 'interleaved' alternates the halves from one "
                          "P layer to the next (default when given alone: split)")


def config_from_args(args) -> tuple[TrainConfig, object]:
    """(TrainConfig, saved ModelConfig or None) for these arguments, merging with a saved run on --resume."""
    from .run_config import merge_for_resume, read_run_config

    given = {name: value for name, value in vars(args).items() if value is not None}
    explicit = {name: value for name, value in given.items() if name in TrainConfig.__dataclass_fields__}
    layout = {name: value for name, value in given.items() if name in PARALLEL_FIELDS}
    if layout:
        explicit["parallel"] = layout  # only the layout flags given: a resumed run keeps the others
    resuming = args.resume or args.resume_from is not None
    saved = read_run_config(args.out) if resuming else None
    if resuming and saved is None and not (explicit.get("preset") or explicit.get("init_hf")):
        flag = "--resume" if args.resume_from is None else "--resume-from"
        raise ValueError(f"{flag}: {args.out} holds no run to resume (no run_config.json there); check --out, or "
                         f"give --preset (or --init-hf) to start a new run in it")
    if saved is not None:
        saved_train, saved_model = saved
        explicit["out"] = saved_train.out = args.out  # the directory may have moved
        merged = merge_for_resume(saved_train, explicit)
        if merged.steps != saved_train.steps and os.environ.get("RANK", "0") == "0":  # once under torchrun
            print(f"note: --steps {merged.steps} (the run was planned for {saved_train.steps}): the {merged.schedule} "
                  f"learning-rate schedule now spans {merged.steps} steps, so the rate changes at the resumed step",
                  file=sys.stderr, flush=True)
        return merged, saved_model
    return TrainConfig.from_dict(explicit), None


def run(args) -> int:
    """0 when the run finished; EXIT_STOPPED when a signal stopped it after saving (resume it). Divergence,
    I/O faults and a stalled rank raise hybridcore.errors.Reported, which carries its own exit code."""
    from ..errors import EXIT_OK, EXIT_STOPPED
    from .trainer import train

    config, model_config = config_from_args(args)
    result = train(config, resume=args.resume, model_config=model_config)
    return EXIT_STOPPED if result.stopped_by_signal else EXIT_OK

