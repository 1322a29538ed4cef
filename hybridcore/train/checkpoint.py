"""Writing training checkpoints: torch.distributed.checkpoint (DCP) directories under RUN_DIR/checkpoints
(hybridcore.io.checkpoints reads them: listing, verifying, resolving; hybridcore.io.load loads them).

    RUN_DIR/checkpoints/step_0000200/
        .metadata, __0_0.distcp   DCP: model, optimizer, "extra" (step, loader position, ...) written by
                                  hybridcore.parallel's save_sharded, so any parallel layout loads them
        rng_rank0.json            each rank's RNG states (python, numpy, torch, cuda)
        config.json               model config + train config + step (load_model needs nothing else)
        complete.json             the marker, written last

Crash safety: everything is written into `.tmp-step_0000200` and renamed to `step_0000200` after the
marker; a checkpoint counts only when its name is final *and* it holds the marker, so a crash at any
moment leaves the previous complete checkpoint as the newest one. Old checkpoints are renamed away
before they are deleted, for the same reason. A save that fails (a full disk) removes its temporary
directory, so the space it took is free again for the next attempt.
"""

from __future__ import annotations

import base64
import errno
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import IOFault, find_os_error
from ..io.checkpoints import (CONFIG_FILE, MARKER, checkpoint_name, checkpoint_step, is_complete,
                              latest_checkpoint, list_checkpoints, newest_intact, read_checkpoint_config,
                              resolve_checkpoint, verify_checkpoint)
from ..io.files import REPLACED, publish_directory, remove_directory, remove_stale_staging
from ..io.json_codec import read_json_object, write_json
from ..io.load import load_model
from ..io.run_dir import CHECKPOINTS
from ..parallel.checkpoint import load_sharded, save_sharded
from . import distributed


# ---- RNG states ---------------------------------------------------------------------------------------
def _tensor_to_text(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.cpu().numpy().tobytes()).decode("ascii")


def _text_to_tensor(text: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(text), dtype=np.uint8).copy())


def capture_rng_state() -> dict:
    version, internal, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [name, keys.tolist(), int(position), int(has_gauss), float(cached)],
             "torch": _tensor_to_text(torch.get_rng_state())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_tensor_to_text(s) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(_text_to_tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([_text_to_tensor(s) for s in state["cuda"]])


# ---- save ---------------------------------------------------------------------------------------------
def save_checkpoint(run_dir: str | Path, step: int, model, optimizer, extra: dict, config: dict) -> Path:
    """Write checkpoint `step` of the run; collective under torch.distributed. Returns its directory.

    extra: small JSON state (loader position, counters); config: {"model": ..., "train": ...}."""
    root = Path(run_dir) / CHECKPOINTS
    final = root / checkpoint_name(step)
    tmp = root / f".tmp-{final.name}"
    rank = distributed.rank()
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # a leftover of a crash while writing this same step
        tmp.mkdir()
    distributed.barrier()
    try:
        save_sharded(tmp, model, optimizer, extra={**extra, "step": step})
        write_json(tmp / f"rng_rank{rank}.json", capture_rng_state(), indent=None)
        distributed.barrier()
        if rank == 0:
            write_json(tmp / CONFIG_FILE, {**config, "step": step})
            write_json(tmp / MARKER, {"step": step, "time": time.time(), "world_size": distributed.world_size()})
            publish_directory(tmp, final)  # an older copy of the same step (a rerun) goes only once this is in
    except BaseException as error:  # DCP's CheckpointException is a BaseException
        if rank == 0:
            fault = None if isinstance(error, KeyboardInterrupt) else _write_fault(error, root, tmp, final.name)
            shutil.rmtree(tmp, ignore_errors=True)  # free what the failed save took
            if fault is not None:
                raise fault from error
        raise
    distributed.barrier()
    return final


def _write_fault(error: BaseException, root: Path, tmp: Path, name: str) -> IOFault | None:
    """The failed save as an IOFault, when an OS error is behind it or the disk is (nearly) full: DCP's
    writer can report a full disk as a bare RuntimeError ("unexpected pos ...") with no errno."""
    os_error = find_os_error(error)
    if os_error is None:
        try:
            free = shutil.disk_usage(root).free
        except OSError:
            return None
        previous = latest_checkpoint(root.parent)
        needed = _size(previous) if previous is not None else 1 << 20
        if free >= needed:
            return None
        os_error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return IOFault(os_error, f"writing checkpoint {name}", path=os_error.filename or tmp)


def _size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


def prune_checkpoints(run_dir: str | Path, keep_last: int, protect: Path | None = None) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints, never `protect` (rank 0 only);
    returns the deleted."""
    if distributed.rank() != 0:
        return []
    found = list_checkpoints(run_dir)
    doomed = [path for _, path in found[:max(0, len(found) - keep_last)] if path != protect]
    for path in doomed:
        remove_directory(path)
    return doomed


def clean_partial(run_dir: str | Path) -> None:
    """Remove what interrupted saves and deletions left behind (rank 0, holding the run's lock, so no
    other process is writing them)."""
    root = Path(run_dir) / CHECKPOINTS
    if distributed.rank() != 0 or not root.is_dir():
        return
    for path in list(root.iterdir()):
        if path.name.startswith((".tmp-", ".deleting-")):
            shutil.rmtree(path, ignore_errors=True)
        elif path.name.startswith(".") and REPLACED in path.name:  # a replacement cut between its renames
            remove_stale_staging(root / path.name[1:].split(REPLACED)[0])


# ---- load ---------------------------------------------------------------------------------------------
def load_checkpoint(path: str | Path, model, optimizer=None) -> dict:
    """Restore model (and optimizer) from a complete checkpoint, plus this rank's RNG states if saved.

    Returns the saved extra state (with "step")."""
    path = Path(path)
    if not is_complete(path):
        raise ValueError(f"{path}: not a complete checkpoint (no {MARKER})")
    extra = load_sharded(path, model, optimizer)
    rng_file = path / f"rng_rank{distributed.rank()}.json"
    if rng_file.is_file():  # absent when resuming on more ranks than saved: nothing to restore then
        restore_rng_state(read_json_object(rng_file))
    return extra


# Reading, verifying and loading live in hybridcore.io; their names stay importable from here.
__all__ = ["save_checkpoint", "load_checkpoint", "load_model", "latest_checkpoint", "list_checkpoints",
           "resolve_checkpoint", "prune_checkpoints", "clean_partial", "checkpoint_name", "checkpoint_step",
           "is_complete", "verify_checkpoint", "newest_intact", "read_checkpoint_config", "capture_rng_state",
           "restore_rng_state", "CHECKPOINTS", "MARKER"]
