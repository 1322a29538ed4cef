"""Training checkpoints: torch.distributed.checkpoint (DCP) directories under RUN_DIR/checkpoints.

    RUN_DIR/checkpoints/step_0000200/
        .metadata, __0_0.distcp   DCP: model, optimizer, "extra" (step, loader position, ...) written by
                                  hybridcore.parallel's save_sharded, so any parallel layout loads them
        rng_rank0.json            each rank's RNG states (python, numpy, torch, cuda)
        config.json               model config + train config + step (load_model needs nothing else)
        complete.json             the marker, written last

Crash safety: everything is written into `.tmp-step_0000200` and renamed to `step_0000200` after the
marker; a checkpoint counts only when its name is final *and* it holds the marker, so a crash at any
moment leaves the previous complete checkpoint as the newest one. Old checkpoints are renamed away
before they are deleted, for the same reason.
"""

from __future__ import annotations

import base64
import random
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ..parallel.checkpoint import load_sharded, save_sharded
from . import distributed
from .files import fsync_dir, read_json, write_json_atomic

CHECKPOINTS = "checkpoints"
MARKER = "complete.json"
CONFIG_FILE = "config.json"
_NAME = re.compile(r"^step_(\d{7,})$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def is_complete(path: str | Path) -> bool:
    path = Path(path)
    return _NAME.match(path.name) is not None and (path / MARKER).is_file()


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(_NAME.match(p.name).group(1)), p) for p in root.iterdir() if is_complete(p)]
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory (its newest complete checkpoint)."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: no such run or checkpoint directory")
    if is_complete(path):
        return path
    if _NAME.match(path.name):
        raise ValueError(f"{path}: incomplete checkpoint (no {MARKER}); it was interrupted while being written")
    latest = latest_checkpoint(path)
    if latest is None:
        raise ValueError(f"{path}: neither a checkpoint directory nor a run directory holding a complete "
                         f"checkpoint under {CHECKPOINTS}/")
    return latest


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
    save_sharded(tmp, model, optimizer, extra={**extra, "step": step})
    write_json_atomic(tmp / f"rng_rank{rank}.json", capture_rng_state(), indent=None)
    distributed.barrier()
    if rank == 0:
        write_json_atomic(tmp / CONFIG_FILE, {**config, "step": step})
        write_json_atomic(tmp / MARKER, {"step": step, "time": time.time(), "world_size": distributed.world_size()})
        if final.exists():  # an older copy of the same step (a rerun after resume): move it aside first
            _remove(final)
        tmp.rename(final)
        fsync_dir(root)
    distributed.barrier()
    return final


def _remove(path: Path) -> None:
    """Rename away, then delete: a half-deleted directory never looks like a checkpoint."""
    trash = path.with_name(f".deleting-{path.name}-{time.time_ns()}")
    path.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints (rank 0 only); returns the deleted."""
    if distributed.rank() != 0:
        return []
    found = list_checkpoints(run_dir)
    doomed = [path for _, path in found[:max(0, len(found) - keep_last)]]
    for path in doomed:
        _remove(path)
    return doomed


def clean_partial(run_dir: str | Path) -> None:
    """Remove what interrupted saves and deletions left behind (rank 0)."""
    root = Path(run_dir) / CHECKPOINTS
    if distributed.rank() != 0 or not root.is_dir():
        return
    for path in root.iterdir():
        if path.name.startswith((".tmp-", ".deleting-")):
            shutil.rmtree(path, ignore_errors=True)


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
        restore_rng_state(read_json(rng_file, "RNG state"))
    return extra


def read_checkpoint_config(path: str | Path) -> dict:
    return read_json(Path(path) / CONFIG_FILE, "checkpoint config")


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """A HybridLM from a checkpoint directory or a run directory (its newest complete checkpoint).

    Checkpoints written under any parallel layout load here, in this process alone (safe to call on
    one rank of a process group). The weights are the fp32 master weights as trained; `dtype` converts
    them after loading."""
    from ..config import ModelConfig
    from ..model import build_model

    checkpoint = resolve_checkpoint(path)
    config = ModelConfig.from_dict(read_checkpoint_config(checkpoint)["model"])
    model = build_model(config, device=device, seed=None)  # every value is overwritten by the load
    load_sharded(checkpoint, model, collective=False)  # whole tensors into one process, whatever the layout
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


__all__ = ["save_checkpoint", "load_checkpoint", "load_model", "latest_checkpoint", "list_checkpoints",
           "resolve_checkpoint", "prune_checkpoints", "clean_partial", "checkpoint_name", "is_complete",
           "read_checkpoint_config", "capture_rng_state", "restore_rng_state", "CHECKPOINTS", "MARKER"]
