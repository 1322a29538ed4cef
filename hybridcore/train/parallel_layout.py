"""The run's parallel layout: the flags resolved against the world size and checked against the model
and the global batch before any work, with hybridcore.parallel's errors retold in terms of the flags."""

from __future__ import annotations

import os

from .config import FLAG_OF_FIELD, ParallelConfig, TrainConfig
from .config import naming_flags as naming_layout_flags

_DEFAULTS = ParallelConfig()


def launched_world_size() -> int:
    """Processes torchrun started (1 without torchrun); readable before the process group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def layout_flags(config: TrainConfig) -> str:
    """The layout flags that differ from their defaults, as typed: "--tp 2 --dp-shard 2"."""
    given = []
    for field, flag in FLAG_OF_FIELD.items():
        value = getattr(config.parallel, field)
        if value != getattr(_DEFAULTS, field):
            given.append(f"--no-{flag[2:]}" if value is False else flag if value is True else f"{flag} {value}")
    return " ".join(given) or "the default layout (--dp-shard -1)"


def naming_flags(config: TrainConfig, context: str = ""):
    """Re-raise hybridcore.parallel's ValueErrors prefixed with the layout flags and in their terms."""
    return naming_layout_flags(f"{layout_flags(config)}{context}: ")


def resolve_layout(config: TrainConfig, model_config, world_size: int):
    """The resolved ParallelConfig for `world_size` processes, checked against the model and the global
    batch (--batch-size x --seq-len); None for one process, which trains without hybridcore.parallel."""
    from ..parallel import check_layout

    with naming_flags(config):
        parallel_config = config.parallel
        try:
            resolved = parallel_config.resolve(world_size)
        except ValueError as error:
            needed = parallel_config.world_size  # at least; dp_shard -1 counts as 1 here
            hint = (f"; launch it with torchrun --nproc-per-node {needed}, or give other layout flags (a resumed "
                    f"run keeps the layout flags it was started with unless they are given again: set a dimension "
                    f"back with its default, e.g. --tp 1, --pp 1 or --dp-shard -1)") if world_size < needed else ""
            raise ValueError(f"{error}{hint}") from None
    if world_size == 1:
        return None
    if config.compile_mode not in (None, "default"):  # CUDA graphs cannot hold the collectives
        raise ValueError(f"--compile-mode {config.compile_mode} is for one process ({world_size} here): the "
                         f"parallel layouts compile each layer in the default mode")
    with naming_flags(config, f" with --batch-size {config.batch_size} --seq-len {config.seq_len}"):
        check_layout(resolved, model_config, rows=config.batch_size, length=config.seq_len,
                     grad_accum=config.grad_accum)
    return resolved


__all__ = ["resolve_layout", "launched_world_size", "layout_flags", "naming_flags"]
