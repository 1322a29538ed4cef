"""`hybridcore` and `python -m hybridcore`: one subcommand per module, each giving
`add_arguments(parser)` and `run(args) -> int`, imported only when its command runs (fast start-up)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, one-line help)
COMMANDS = {
    "info": ("hybridcore.info", "describe a preset, a Hugging Face model directory or a Hub id"),
    "prepare": ("hybridcore.data.cli", "tokenize text, JSONL or Parquet into token shards"),
    "train": ("hybridcore.train.cli", "train a model (one process, or several under torchrun)"),
    "eval": ("hybridcore.train.evaluate", "loss and perplexity of a checkpoint on held-out data"),
    "plot": ("hybridcore.train.plot", "plot loss, learning rate and throughput of runs"),
    "import-hf": ("hybridcore.bridge.cli_import",
                  "convert a Hugging Face model (Falcon-H1, Nemotron-H, Granite-4.0-H, Bamba) to a model directory"),
    "export-hf": ("hybridcore.bridge.cli_export",
                  "convert a checkpoint to a Hugging Face directory of the family its layout fits"),
    "generate": ("hybridcore.generate_cli", "sample text from a checkpoint or a Hugging Face directory"),
    "bench": ("hybridcore.bench", "time one contender's training step (ours or transformers') on one GPU"),
    "check": ("hybridcore.train.check", "list a run's checkpoints and whether each is intact, and its lock"),
}
# Commands that run as several processes under torchrun; every other command is one process's work, which
# each rank would do whole (and `prepare` or `export-hf` would write over each other).
TORCHRUN_COMMANDS = {"train"}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command is listed; only `command`'s module is imported to add its arguments."""
    parser = argparse.ArgumentParser(prog="hybridcore", description="Train parallel-hybrid attention + Mamba-2 "
                                     "language models (Falcon-H1 and every mix of its layers).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        command_parser.set_defaults(_module=module)
        if name == command:
            importlib.import_module(module).add_arguments(command_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs one command; its exit code is one of hybridcore.errors' EXIT_* (a traceback only for the
    unexpected)."""
    from .errors import EXIT_ABORTED, EXIT_IO, EXIT_USAGE, IOFault, Reported, find_os_error

    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    args = build_parser(command).parse_args(argv)
    rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    prefix = f"hybridcore {args.command}: " + (f"rank {rank}: " if world != "1" else "")
    try:
        if world != "1" and args.command not in TORCHRUN_COMMANDS:
            raise ValueError(f"`hybridcore {args.command}` runs in one process, and WORLD_SIZE={world} says this is "
                             f"one of several (torchrun sets it): start it without torchrun, or with WORLD_SIZE "
                             f"unset (every rank would do all of its work; only `train` runs as several)")
        return int(importlib.import_module(args._module).run(args) or 0)
    except ValueError as error:  # a user's mistake: say what and where, no traceback
        if rank == "0":  # under torchrun every rank finds it: say it once
            print(f"hybridcore {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except Reported as error:
        if rank == "0" or error.every_rank:
            print(f"{prefix}error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"\n{prefix}aborted (Ctrl-C)", file=sys.stderr)
        return EXIT_ABORTED
    except BrokenPipeError:  # output piped into `head` and cut short
        sys.stderr.close()
        return 0
    except BaseException as error:  # an OS fault no command explained: one paragraph, not a traceback
        if isinstance(error, (SystemExit, GeneratorExit)):
            raise
        os_error = find_os_error(error)
        if os_error is None:
            raise
        print(f"{prefix}error: {IOFault(os_error, args.command)}", file=sys.stderr)
        return EXIT_IO


if __name__ == "__main__":
    sys.exit(main())
