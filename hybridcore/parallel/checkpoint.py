"""Checkpoints that load under any layout: torch.distributed.checkpoint (DCP) over DTensor state dicts.

Every rank writes only its shards; DCP records each tensor's global shape, so a checkpoint written by
tp2 x fsdp2 loads into one process or into tp4. The one layout-specific detail is Mamba-2's fused
tensors (in_proj, conv): parallelized models hold them as one parameter per segment (segments.py), and
checkpoints always do, so a plain model's fused tensors are split into views here on save and
concatenated back on load. `full_state_dict` gives the plain, fused, unsharded tensors for export.

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
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)

from ..model.mamba2 import Mamba2Mixer
from .segments import fused_layout, is_split

_WRAPPER_PARTS = ("_checkpoint_wrapped_module", "_orig_mod", "_fsdp_wrapped_module")


def _clean(name: str) -> str:
    """A module path as state dicts spell it (activation-checkpoint and compile wrappers removed)."""
    return ".".join(part for part in name.split(".") if part not in _WRAPPER_PARTS)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def plain_fused_tensors(model: nn.Module) -> dict[str, list[tuple[str, int]]]:
    """Fused Mamba tensors of mixers that are not split: fqn -> [(segment fqn, rows)]."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, Mamba2Mixer) and not is_split(module):
            prefix = _clean(name)
            for fused, segments in fused_layout(module).items():
                out[_join(prefix, fused)] = [(_join(prefix, seg), rows) for seg, rows in segments]
    return out


def split_tensors(model: nn.Module) -> dict[str, list[str]]:
    """Fused tensors that a parallelized model holds as segments: fused fqn -> [segment fqns]."""
    out = {}
    for name, module in model.named_modules():
        for leaf, parts in module.__dict__.get("_fused", {}).items():
            prefix = _clean(name)
            out[_join(prefix, leaf)] = [_join(prefix, part) for part in parts]
    return out


# ---- plain model <-> checkpoint layout -----------------------------------------------------------
def _split_model_state(state: dict, fused: dict) -> None:
    for key, segments in fused.items():
        tensor = state.pop(key)
        for (segment, _), piece in zip(segments, torch.split(tensor, [rows for _, rows in segments], dim=0)):
            state[segment] = piece


def _join_model_state(state: dict, fused: dict) -> None:
    for key, segments in fused.items():
        state[key] = torch.cat([state.pop(segment) for segment, _ in segments], dim=0)


# Flattened optimizer state dicts have one key per parameter and field: "state.<fqn>.exp_avg",
# "param_groups.<fqn>.lr". A fused parameter's per-row fields split like the parameter; the rest
# (step, hyper-parameters) are copied to every segment.
_OPTIMIZER_SECTIONS = ("state", "param_groups")


def _split_optimizer_state(state: dict, fused: dict) -> None:
    for key, segments in fused.items():
        rows = [r for _, r in segments]
        for section in _OPTIMIZER_SECTIONS:
            prefix = f"{section}.{key}."
            for name in [n for n in state if n.startswith(prefix)]:
                value, field = state.pop(name), name[len(prefix):]
                pieces = torch.split(value, rows, dim=0) if _is_per_row(value, sum(rows)) else None
                for index, (segment, _) in enumerate(segments):
                    state[f"{section}.{segment}.{field}"] = pieces[index] if pieces else _copy(value)


def _join_optimizer_state(state: dict, fused: dict) -> None:
    for key, segments in fused.items():
        names = [n for n, _ in segments]
        for section in _OPTIMIZER_SECTIONS:
            prefix = f"{section}.{names[0]}."
            for name in [n for n in state if n.startswith(prefix)]:
                field = name[len(prefix):]
                values = [state.pop(f"{section}.{segment}.{field}") for segment in names]
                joined = _is_per_row(values[0], segments[0][1])
                state[f"{section}.{key}.{field}"] = torch.cat(values, dim=0) if joined else values[0]


def _is_per_row(value, rows: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == rows


def _copy(value):
    return value.clone() if isinstance(value, torch.Tensor) else value


def _parts(model, optimizer) -> list[tuple[nn.Module, torch.optim.Optimizer | None]]:
    """(module, its optimizer) pairs: one model, or a pipeline's stages with one optimizer each."""
    modules = list(getattr(model, "model_parts", None) or (model if isinstance(model, (list, tuple)) else [model]))
    if optimizer is None:
        return [(m, None) for m in modules]
    optimizers = list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]
    if len(optimizers) != len(modules):
        raise ValueError(f"{len(modules)} model parts but {len(optimizers)} optimizers: give one per part")
    return list(zip(modules, optimizers))


_FLAT = StateDictOptions(flatten_optimizer_state_dict=True)


# ---- public ------------------------------------------------------------------------------------
def checkpoint_state(model, optimizer=None) -> dict:
    """{"model": ..., "optimizer": ...} in the layout-independent checkpoint form: DTensors where the
    model is sharded, segment views of the fused Mamba tensors where it is not, flat optimizer keys.

    model: a HybridLM, a Pipeline or a list of stage modules; optimizer: one, or one per stage.
    """
    state = {"model": {}}
    if optimizer is not None:
        state["optimizer"] = {}
    for module, optim in _parts(model, optimizer):
        fused = plain_fused_tensors(module)
        model_state = get_model_state_dict(module, options=_FLAT)
        _split_model_state(model_state, fused)
        state["model"].update(model_state)
        if optim is not None:
            optim_state = get_optimizer_state_dict(module, optim, options=_FLAT)
            _split_optimizer_state(optim_state, fused)
            state["optimizer"].update(optim_state)
    return state


def save_sharded(path, model, optimizer=None, extra: dict | None = None) -> None:
    """Write model (and optimizer) shards of every rank to the directory `path`; collective.

    model: a HybridLM, a Pipeline or a list of stage modules; optimizer: one, or one per stage.
    extra: a JSON-serialisable dict (step, data position, ...) returned by `load_sharded`.
    """
    state = checkpoint_state(model, optimizer)
    state["extra"] = json.dumps(extra or {})
    with _quiet_single_process():
        dcp.save(state, checkpoint_id=str(path), no_dist=not dist.is_initialized())


def load_sharded(path, model, optimizer=None, collective: bool = True) -> dict:
    """Load a checkpoint written by `save_sharded` under any layout into `model` (and `optimizer`)
    as they are sharded now; collective. Returns the saved `extra` dict.

    collective=False: this process reads alone into an unsharded model, even while a process group
    exists (e.g. rank 0 loading the full model to sample from it; the other ranks do not call this)."""
    state = checkpoint_state(model, optimizer)
    state["extra"] = ""
    with _quiet_single_process(collective):
        dcp.load(state, checkpoint_id=str(path), no_dist=not (collective and dist.is_initialized()))
    for module, optim in _parts(model, optimizer):
        fused = plain_fused_tensors(module)
        keys = set(get_model_state_dict(module, options=_FLAT)) - set(fused) | \
            {segment for segments in fused.values() for segment, _ in segments}
        model_state = {key: state["model"][key] for key in keys}
        _join_model_state(model_state, fused)
        set_model_state_dict(module, model_state, options=_FLAT)
        if optim is not None:
            own = get_optimizer_state_dict(module, optim, options=_FLAT)
            _split_optimizer_state(own, fused)
            optim_state = {key: state["optimizer"][key] for key in own}
            _join_optimizer_state(optim_state, fused)
            set_optimizer_state_dict(module, optim, optim_state, options=_FLAT)
    return json.loads(state["extra"])


@contextlib.contextmanager
def _quiet_single_process(collective: bool = True):
    """DCP warns that it assumes one process when torch.distributed is not initialised: that is intended."""
    with warnings.catch_warnings():
        if not (collective and dist.is_initialized()):
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def full_state_dict(model, cpu_offload: bool = True) -> dict[str, torch.Tensor]:
    """The unsharded model state with the model's own keys (fused Mamba tensors), for export.

    Collective. With cpu_offload (the default) the tensors are on CPU and only rank 0 gets them (the
    other ranks get an empty dict); without, every rank gets them on its device. For a Pipeline each
    rank gets its own stages' tensors only: with pp > 1 export through save_sharded + one process.
    """
    state = {}
    options = StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload)
    for module, _ in _parts(model, None):
        part = get_model_state_dict(module, options=options)
        for key, segments in split_tensors(module).items():
            if segments[0] in part:
                part[key] = torch.cat([part.pop(segment) for segment in segments], dim=0)
        state.update(part)
    return state
