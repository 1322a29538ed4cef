"""Reading training checkpoints (train/checkpoint.py writes them): which exist, whether each is intact,
and which one a run directory stands for.

A checkpoint counts when its name is final (step_NNNNNNN) and it holds the marker written last. Intact
means more, checked cheaply (no tensor is read): the marker and config parse, DCP's .metadata loads,
and every file is at least as long as the byte ranges .metadata records in it, so a truncated or
half-copied checkpoint is caught before a resume or an export reads it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from .json_codec import read_json_object
from .run_dir import CHECKPOINTS, is_run_dir

MARKER = "complete.json"
CONFIG_FILE = "config.json"
DAMAGED = ".damaged"  # step_NNNNNNN.damaged: set aside by a resume that found it damaged
_NAME = re.compile(r"^step_(\d{7,})$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def checkpoint_step(path: str | Path) -> int | None:
    match = _NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def is_complete(path: str | Path) -> bool:
    path = Path(path)
    return checkpoint_step(path) is not None and (path / MARKER).is_file()


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted((checkpoint_step(p), p) for p in root.iterdir() if is_complete(p))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def verify_checkpoint(path: str | Path) -> str | None:
    """None when the checkpoint looks intact, else what is wrong with it (naming the file)."""
    path = Path(path)
    if not is_complete(path):
        return f"no {MARKER} (it was interrupted while being written)"
    try:
        marker = read_json_object(path / MARKER)
        if marker.get("step") != checkpoint_step(path):
            return f"{MARKER} names step {marker.get('step')!r}, not {checkpoint_step(path)}"
        if not isinstance(read_json_object(path / CONFIG_FILE).get("model"), dict):
            return f"{CONFIG_FILE} holds no model config"
        for rng in path.glob("rng_rank*.json"):
            read_json_object(rng)
    except ValueError as error:
        return str(error).replace(f"{path}/", "")
    return _verify_dcp(path)


def _verify_dcp(path: Path) -> str | None:
    from torch.distributed.checkpoint import FileSystemReader

    try:
        metadata = FileSystemReader(str(path)).read_metadata()
    except Exception as error:  # a truncated pickle raises anything from EOFError to UnpicklingError
        return f".metadata cannot be read ({type(error).__name__}: {error})"
    needed: dict[str, int] = {}
    for info in metadata.storage_data.values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(needed.items()):
        file = path / name
        if not file.is_file():
            return f"{name} is missing (its .metadata records data in it)"
        found = file.stat().st_size
        if found < size:
            return f"{name} holds {found:,} bytes, but its .metadata records data up to byte {size:,} (truncated)"
    return None


def newest_intact(run_dir: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """(the newest intact checkpoint or None, [(newer damaged checkpoint, what is wrong)])."""
    damaged = []
    for _, path in reversed(list_checkpoints(run_dir)):
        problem = verify_checkpoint(path)
        if problem is None:
            return path, damaged
        damaged.append((path, problem))
    return None, damaged


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory's newest intact checkpoint (a warning names any newer
    damaged one that was passed over)."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: no such run or checkpoint directory")
    if checkpoint_step(path) is not None:
        problem = verify_checkpoint(path)
        if problem is not None:
            raise ValueError(f"{path}: damaged checkpoint: {problem}")
        return path
    chosen, damaged = newest_intact(path)
    for bad, problem in damaged:
        print(f"warning: {bad} is damaged ({problem}); passing over it", file=sys.stderr, flush=True)
    if chosen is None:
        if damaged:
            raise ValueError(f"{path}: a run directory whose every checkpoint is damaged "
                             f"({', '.join(bad.name for bad, _ in damaged)}); `hybridcore check {path}` says what "
                             f"is wrong with each")
        if is_run_dir(path):
            raise ValueError(f"{path}: a run directory with no complete checkpoint yet under {CHECKPOINTS}/")
        raise ValueError(f"{path}: neither a checkpoint directory nor a run directory holding a complete "
                         f"checkpoint under {CHECKPOINTS}/")
    return chosen


def read_checkpoint_config(path: str | Path) -> dict:
    """{"model": ModelConfig fields, "train": TrainConfig fields, "step": N} of a checkpoint."""
    return read_json_object(Path(path) / CONFIG_FILE)


__all__ = ["MARKER", "CONFIG_FILE", "DAMAGED", "checkpoint_name", "checkpoint_step", "is_complete",
           "list_checkpoints", "latest_checkpoint", "verify_checkpoint", "newest_intact", "resolve_checkpoint",
           "read_checkpoint_config"]
