"""Checkpoints that load under any layout: torch.distributed.checkpoint (DCP) over global views.

Every rank writes only what it holds: each parameter and optimizer moment goes to DCP as its global
view (layouts.global_view, a DTensor over this rank's data), so DCP records the whole tensor's shape
and this rank's offsets, and a checkpoint written by tp2 x fsdp2 loads into one process or into tp4.
The keys are the model's own parameter names in every layout. Loading writes into the model's and the
optimizer's tensors in place.

Layout of a checkpoint directory: DCP's files, with keys "model", "optimizer" (if given) and "extra"
(a JSON string of the caller's small state: step, data position, ...).
"""

from __future__ import annotations

import contextlib
import json
import warnings

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_optimizer_state_dict)
from torch.distributed.tensor import DTensor

from .layouts import global_view
from .parallelize import ParallelModel, as_parallel_model

_FLAT = StateDictOptions(flatten_optimizer_state_dict=True)


def _parts(model, optimizer) -> list[tuple[object, torch.optim.Optimizer | None]]:
    optimizers = list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]
    if optimizer is not None and len(optimizers) != len(model.parts):
        raise ValueError(f"{len(model.parts)} model parts but {len(optimizers)} optimizers: give one per part")
    return list(zip(model.parts, optimizers if optimizer is not None else [None] * len(model.parts)))


def _view(model: ParallelModel, name: str, tensor):
    """A parameter-shaped tensor of `name` as its global view (other values as they are)."""
    if not isinstance(tensor, torch.Tensor) or name not in model.layouts:
        return tensor
    return global_view(tensor, model.layouts[name], model.view_mesh_of(name), model.fsdp)


def _optimizer_parameter(key: str) -> str | None:
    """"state.<name>.exp_avg" -> <name> (per-parameter tensors); None for anything else."""
    section, _, rest = key.partition(".")
    if section != "state":
        return None
    return rest.rpartition(".")[0]


def checkpoint_state(model, optimizer=None) -> tuple[dict, list]:
    """({"model": ..., "optimizer": ...} of global views, [(part, optimizer, its own flat state)])."""
    model = as_parallel_model(model)
    state, owned = {"model": {}}, []
    if optimizer is not None:
        state["optimizer"] = {}
    for part, optim in _parts(model, optimizer):
        for name, tensor in get_model_state_dict(part).items():
            state["model"][name] = _view(model, name, tensor)
        if optim is not None:
            own = get_optimizer_state_dict(part, optim, options=_FLAT)
            for key, value in own.items():
                name = _optimizer_parameter(key)
                moment = name is not None and isinstance(value, torch.Tensor) and value.ndim > 0
                state["optimizer"][key] = _view(model, name, value) if moment else value
            owned.append((part, optim, own))
    return state, owned


def save_sharded(path, model, optimizer=None, extra: dict | None = None) -> None:
    """Write model (and optimizer) shards of every rank to the directory `path`; collective.

    model: a HybridLM or the ParallelModel `parallelize` returned; optimizer: one, or one per part.
    extra: a JSON-serialisable dict (step, data position, ...) returned by `load_sharded`.
    """
    state, _ = checkpoint_state(model, optimizer)
    state["extra"] = json.dumps(extra or {})
    with _quiet_single_process():
        dcp.save(state, checkpoint_id=str(path), no_dist=not dist.is_initialized())


def load_sharded(path, model, optimizer=None, collective: bool = True) -> dict:
    """Load a checkpoint written by `save_sharded` under any layout into `model` (and `optimizer`)
    as they are split now; collective. Returns the saved `extra` dict.

    collective=False: this process reads alone into an unsharded model, even while a process group
    exists (e.g. rank 0 loading the full model to sample from it; the other ranks do not call this)."""
    state, owned = checkpoint_state(model, optimizer)
    state["extra"] = ""
    with _quiet_single_process(collective):
        dcp.load(state, checkpoint_id=str(path), no_dist=not (collective and dist.is_initialized()))
    for part, optim, own in owned:  # tensors were loaded in place; hyper-parameters are values
        loaded = {key: own[key] if isinstance(own[key], torch.Tensor) else state["optimizer"][key] for key in own}
        set_optimizer_state_dict(part, optim, loaded, options=_FLAT)
    return json.loads(state["extra"])


@contextlib.contextmanager
def _quiet_single_process(collective: bool = True):
    """DCP warns that it assumes one process when torch.distributed is not initialised: that is intended."""
    with warnings.catch_warnings():
        if not (collective and dist.is_initialized()):
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def full_state_dict(model, cpu_offload: bool = True) -> dict[str, torch.Tensor]:
    """The unsharded model state with the model's own keys, for export and comparison.

    Collective. With cpu_offload (the default) the tensors are on CPU and only rank 0 gets them (the
    other ranks get an empty dict); without, every rank gets them on its device. Under a pipeline each
    rank gets its own stages' tensors (export through save_sharded + one process instead).
    """
    model = as_parallel_model(model)
    keep = not cpu_offload or not dist.is_initialized() or dist.get_rank() == 0
    state = {}
    for part in model.parts:
        for name, tensor in get_model_state_dict(part).items():
            view = _view(model, name, tensor)
            full = view.full_tensor() if isinstance(view, DTensor) else view.detach()
            if keep:
                state[name] = full.cpu() if cpu_offload else full
    if cpu_offload and dist.is_initialized() and dist.get_rank() != 0:
        return {}
    return state
