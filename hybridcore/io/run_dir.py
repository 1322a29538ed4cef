"""What makes a directory a training run: the names `hybridcore train` writes into RUN_DIR, and the
run a path belongs to (commands that replace outputs must never replace a run's files)."""

from __future__ import annotations

from pathlib import Path

RUN_CONFIG = "run_config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
LOCK_FILE = "run.lock"


def is_run_dir(path: str | Path) -> bool:
    path = Path(path)
    if any((path / name).is_file() for name in (RUN_CONFIG, METRICS_FILE, LOCK_FILE)):
        return True
    checkpoints = path / CHECKPOINTS
    return checkpoints.is_dir() and any(checkpoints.glob("step_*"))


def enclosing_run(path: str | Path) -> Path | None:
    """The run directory that `path` is or lies inside, if any (symlinks resolved)."""
    path = Path(path).resolve()
    for candidate in (path, *path.parents):
        if is_run_dir(candidate):
            return candidate
    return None


__all__ = ["RUN_CONFIG", "METRICS_FILE", "CHECKPOINTS", "LOCK_FILE", "is_run_dir", "enclosing_run"]
