"""Writes docs/configuration.md from the config dataclasses, so the reference cannot drift from the code.

    python docs/make_configuration.py           # rewrite docs/configuration.md
    python docs/make_configuration.py --check   # exit 1 when docs/configuration.md is stale

A field's meaning comes from the MEANINGS table below where it names the field (fields with no text in
their file, or whose flag says the opposite of the field, as --no-progress), else the string under the field
(ModelConfig), else, for TrainConfig, the help of its `hybridcore train` flag (the text users see; the
comments there are notes on values), else the comment on the field's line, else the flag's help. Its unit
comes from a trailing "[unit]" or the UNITS table. A field with no meaning anywhere is an error naming it.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import math
import re
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from hybridcore.config import ModelConfig  # noqa: E402
from hybridcore.parallel.config import ParallelConfig  # noqa: E402
from hybridcore.train import cli as train_cli  # noqa: E402
from hybridcore.train.config import TrainConfig  # noqa: E402

OUTPUT = ROOT / "docs" / "configuration.md"

MEANINGS = {
    "TrainConfig.beta1": "AdamW's first-moment decay (no flag: set it in run_config.json)",
    "TrainConfig.beta2": "AdamW's second-moment decay (no flag: set it in run_config.json)",
    "TrainConfig.eps": "AdamW's epsilon (no flag: set it in run_config.json)",
    "TrainConfig.compile": "torch.compile each layer, after activation checkpointing (default: on with CUDA, "
                           "a layer that fails to compile then running eagerly with a warning; off on CPU)",
    "TrainConfig.doc_masking": "attention and the Mamba-2 state stay within each document of a packed row "
                               "(--no-doc-masking lets them cross document boundaries)",
    "TrainConfig.progress": "show a progress bar (--no-progress hides it)",
    "TrainConfig.parallel": "the parallel layout: the fields of [ParallelConfig](#parallelconfig), each set "
                            "with its own flag",
    "ParallelConfig.pp_schedule": "pipeline schedule: 1f1b, interleaved_1f1b or gpipe",
    "ParallelConfig.pp_microbatches": "pipeline microbatches per step; None: 2 x pp x pp_stages_per_rank",
    "ParallelConfig.pp_stages_per_rank": "pipeline stages each rank holds; more than 1 needs pp_schedule "
                                         "interleaved_1f1b",
}
UNITS = {
    "TrainConfig.steps": "optimizer steps", "TrainConfig.batch_size": "rows", "TrainConfig.seq_len": "tokens",
    "TrainConfig.grad_accum": "micro-batches", "TrainConfig.warmup": "steps", "TrainConfig.save_every": "steps",
    "TrainConfig.keep_last": "checkpoints", "TrainConfig.eval_every": "steps", "TrainConfig.eval_batches": "batches",
    "TrainConfig.checkpoint_layers": "layers", "TrainConfig.loss_chunk": "tokens", "TrainConfig.peak_flops":
    "FLOP/s per device", "TrainConfig.max_bad_steps": "steps", "TrainConfig.sample_tokens": "tokens",
    "ParallelConfig.pp_microbatches": "microbatches", "ParallelConfig.pp_stages_per_rank": "stages",
    **{f"ParallelConfig.{name}": "ranks" for name in ("tp", "pp", "cp", "dp_shard", "dp_replicate")},
}
INTRODUCTIONS = {
    ModelConfig: "The model: shapes, layout and µP multipliers (`hybridcore/config.py`). A preset fills every "
                 "field (`hybridcore info PRESET --json` prints them); `--set NAME=VALUE` changes one, on "
                 "`train`, `info` and `bench`. The defaults below are the dataclass's own.",
    TrainConfig: "A training run (`hybridcore/train/config.py`): every `hybridcore train` flag. A run directory "
                 "keeps it in `run_config.json`, so `--resume` needs no other flags.",
    ParallelConfig: "The parallel layout (`hybridcore/parallel/config.py`): `TrainConfig.parallel`, set through "
                    "`hybridcore train`'s parallel flags and kept under `train.parallel` in `run_config.json`; "
                    "see [parallelism.md](parallelism.md).",
}


def docstrings(cls) -> dict[str, str]:
    """{field: the string literal under it} in cls's source."""
    body = ast.parse(inspect.getsource(cls)).body[0].body
    found = {}
    for statement, following in zip(body, body[1:] + [None]):
        if isinstance(statement, ast.AnnAssign) and isinstance(following, ast.Expr) \
                and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str):
            found[statement.target.id] = " ".join(following.value.value.split())
    return found


def field_notes(cls) -> dict[str, str]:
    """{field: the string literal under it, or else the comment on its line} in cls's source."""
    source = inspect.getsource(cls)
    body = ast.parse(source).body[0].body
    notes = docstrings(cls)
    lines = {statement.lineno: statement.target.id for statement in body if isinstance(statement, ast.AnnAssign)}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        name = lines.get(token.start[0])
        if token.type == tokenize.COMMENT and name and name not in notes:
            notes[name] = token.string.lstrip("#").strip()
    return notes


def train_flags() -> dict[str, tuple[str, str]]:
    """{TrainConfig field: (its flag, its help without the default)} from `hybridcore train`'s parser."""
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    flags = {}
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            help_text = re.sub(r" \(default [^)]*\)$", "", action.help or "")
            flags[action.dest] = (" / ".join(action.option_strings), help_text)
    return flags


def default_text(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "required"
    if dataclasses.is_dataclass(value):
        return f"{type(value).__name__}()"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:g}"
    if isinstance(value, tuple):
        return "(" + ", ".join(f"{item:g}" for item in value) + ")"
    return repr(value) if isinstance(value, str) else str(value)


def rows(cls, flags: dict) -> list[str]:
    notes = field_notes(cls)
    out = []
    for field in dataclasses.fields(cls):
        key = f"{cls.__name__}.{field.name}"
        flag, help_text = flags.get(field.name, ("", ""))
        if cls is ModelConfig:
            flag = f"`--set {field.name}=...`"
        elif flag:
            flag = f"`{flag}`"
        note = notes.get(field.name)
        in_order = [note, help_text] if cls is not TrainConfig or field.name in docstrings(cls) else [help_text, note]
        meaning = MEANINGS.get(key) or next((text for text in in_order if text), None)
        if not meaning:
            raise ValueError(f"{key} has no description: write one under the field, or add it to MEANINGS in "
                             f"docs/make_configuration.py")
        unit = UNITS.get(key, "")
        found = re.search(r"\s\[([^\[\]]+)\]$", meaning)
        if found:
            meaning, unit = meaning[:found.start()], found.group(1)
        out.append(f"| `{field.name}` | {flag} | `{default_text(field)}` | {unit} | {meaning.replace('|', '&#124;')} |")
    return out


def document() -> str:
    flags = train_flags()
    parts = ["# Configuration reference", "",
             "Generated by `docs/make_configuration.py` from the config dataclasses; do not edit by hand.", ""]
    for cls in (ModelConfig, TrainConfig, ParallelConfig):
        parts += [f"## {cls.__name__}", "", INTRODUCTIONS[cls], "",
                  "| field | set with | default | unit | meaning |", "|---|---|---|---|---|", *rows(cls, flags), ""]
    return "\n".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 when the file differs from what is generated")
    args = parser.parse_args(argv)
    text = document()
    if args.check:
        stale = not OUTPUT.exists() or OUTPUT.read_text() != text
        print(f"{OUTPUT.relative_to(ROOT)} is {'stale: run python docs/make_configuration.py' if stale else 'current'}")
        return 1 if stale else 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
