"""One process trains in a run directory at a time: RUN_DIR/run.lock, an advisory lock (hybridcore.io.lock)
held by rank 0 for the whole run. A second `train` (fresh or --resume) is refused with a message naming
the holder; the lock of a holder that died (kill -9, a crash, a lost node) is taken over with a warning."""

from __future__ import annotations

import sys
from pathlib import Path

from ..io.lock import FileLock, Locked, holder_of
from ..io.run_dir import LOCK_FILE
from . import distributed


def refuse_if_locked(run_dir: str | Path) -> None:
    """ValueError naming the holder when a live process holds the run's lock (read-only: takes nothing)."""
    holder = holder_of(Path(run_dir) / LOCK_FILE)
    if holder is not None:
        raise Locked(Path(run_dir) / LOCK_FILE, holder, _busy(run_dir, holder.describe()))


def lock_run(run_dir: Path) -> FileLock | None:
    """Create RUN_DIR if needed and take its lock on rank 0; collective: every rank learns the outcome.
    Returns the lock on rank 0 (release it when the run ends), None elsewhere."""
    held = []

    def take() -> None:  # rank 0; the lock itself stays here (only the outcome is sent to the others)
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(run_dir / LOCK_FILE)
        try:
            stale = lock.acquire()
        except Locked as error:
            raise Locked(error.path, error.holder, _busy(run_dir, (error.holder and error.holder.describe())
                                                          or "another process")) from None
        if stale is not None:
            print(f"warning: {run_dir / LOCK_FILE}: taking over the lock of {stale.describe()}, which ended "
                  f"without releasing it", file=sys.stderr, flush=True)
        held.append(lock)

    distributed.on_rank_zero(take)
    return held[0] if held else None


def _busy(run_dir, who: str) -> str:
    return (f"--out: {run_dir} is in use by another process: {who}. Wait for it to finish, or stop it (SIGTERM "
            f"makes it save a checkpoint first), or choose another --out")


__all__ = ["lock_run", "refuse_if_locked", "LOCK_FILE"]
