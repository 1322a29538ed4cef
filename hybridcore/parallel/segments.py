"""Mamba-2's fused tensors split into their segments, and modules that compute with local shards.

The Mamba-2 in_proj writes [z | x | B | C | dt] in one matrix and the conv weight covers [x | B | C].
Tensor parallelism needs each rank's slice of *every* segment (Megatron's per-segment sharding), which
no single DTensor placement of the fused matrix describes. So a parallelized model holds one parameter
per segment (`in_proj.weight_z`, ..., `conv_weight_x`, ...), each an ordinary Shard(0) DTensor that
FSDP and torch.distributed.checkpoint reshard like any other. This is also the checkpoint layout
(Megatron does the same); `checkpoint.py` splits a plain model's fused tensors the same way, with views.

Inside forward the module must see plain tensors of its local heads: `LocalParameters` (mixed into the
module's class at parallelize time) answers `module.weight` with the concatenation of the segments'
local shards, and any other DTensor parameter with its local shard (with one B/C group, B and C are
replicated and the whole group is "local"). The concatenation of rank r's
slices [z_r | x_r | B_r | C_r | dt_r] is exactly the fused in_proj of a mixer with H/tp heads and G/tp
groups, so the model's own forward runs unchanged once its head counts are the local ones.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import DTensor, Partial, Replicate

from ..model.mamba2 import Mamba2Mixer

IN_PROJ_SEGMENTS = ("z", "x", "B", "C", "dt")
CONV_SEGMENTS = ("x", "B", "C")


def in_proj_widths(mixer: Mamba2Mixer) -> list[int]:
    return mixer.segment_widths()


def conv_widths(mixer: Mamba2Mixer) -> list[int]:
    group_state = mixer.n_groups * mixer.d_state
    return [mixer.d_ssm, group_state, group_state]


FUSED_SEGMENTS = {"in_proj.weight": IN_PROJ_SEGMENTS, "in_proj.bias": IN_PROJ_SEGMENTS,
                  "conv_weight": CONV_SEGMENTS, "conv_bias": CONV_SEGMENTS}


def segment_names(fused: str) -> list[str]:
    """Names of the segment parameters that replace a fused one: in_proj.weight -> in_proj.weight_z, ..."""
    return [f"{fused}_{segment}" for segment in FUSED_SEGMENTS[fused]]


def fused_layout(mixer: Mamba2Mixer) -> dict[str, list[tuple[str, int]]]:
    """For a mixer that is not split yet: fused name -> [(segment name, rows)], present tensors only."""
    widths = {"in_proj": in_proj_widths(mixer), "conv": conv_widths(mixer)}
    layout = {}
    for fused in FUSED_SEGMENTS:
        owner, _, leaf = fused.rpartition(".")
        module = mixer.get_submodule(owner)
        if module._parameters.get(leaf) is not None:
            rows = widths["in_proj" if owner else "conv"]
            layout[fused] = list(zip(segment_names(fused), rows))
    return layout


def _to_local(tensor: torch.Tensor) -> torch.Tensor:
    """The local shard. A replicated parameter (Mamba B/C with one group under TP) feeds only this
    rank's heads, so its gradient here is a partial sum: say so, and DTensor sums it over the ranks."""
    if not isinstance(tensor, DTensor):
        return tensor
    if all(isinstance(p, Replicate) for p in tensor.placements):
        return tensor.to_local(grad_placements=[Partial()] * len(tensor.placements))
    return tensor.to_local()


class LocalParameters:
    """Mixin: while the module's own forward runs, attribute reads of DTensor parameters return their
    local shards and fused names return the concatenation of their segments. Outside forward the
    parameters are what they are (FSDP and state dicts read them by name), and a fused name raises."""

    _fused: dict[str, list[str]]

    def forward(self, *args, **kwargs):
        self.__dict__["_local_view"] = True
        try:
            return super().forward(*args, **kwargs)
        finally:
            self.__dict__["_local_view"] = False

    def __getattr__(self, name: str):
        fused = self.__dict__.get("_fused", {})
        local_view = self.__dict__.get("_local_view", False)
        if name in fused:
            if not local_view:
                raise AttributeError(f"{type(self).__name__}.{name} was split into {fused[name]} by "
                                     f"hybridcore.parallel; read those parameters")
            return torch.cat([_to_local(nn.Module.__getattr__(self, part)) for part in fused[name]], dim=0)
        value = nn.Module.__getattr__(self, name)
        if local_view and isinstance(value, DTensor):
            return _to_local(value)
        return value


_MIXED_CLASSES: dict[tuple[type, type], type] = {}


def mix_in(module: nn.Module, mixin: type) -> None:
    """Give `module` a subclass of its class with `mixin` first in the MRO (idempotent). The
    parameters, buffers and hooks stay as they are; only methods change."""
    base = type(module)
    if issubclass(base, mixin):
        return
    if (mixin, base) not in _MIXED_CLASSES:
        name = f"{mixin.__name__.removesuffix('Parameters').removesuffix('Mixin')}{base.__name__}"
        _MIXED_CLASSES[(mixin, base)] = type(name, (mixin, base), {})
    module.__class__ = _MIXED_CLASSES[(mixin, base)]


def make_local(module: nn.Module) -> None:
    """Give `module` the LocalParameters behaviour (idempotent), keeping its own class's forward."""
    mix_in(module, LocalParameters)
    module.__dict__.setdefault("_fused", {})


def is_split(module: nn.Module) -> bool:
    return isinstance(module, LocalParameters) and bool(module.__dict__.get("_fused"))


def _split_parameter(module: nn.Module, leaf: str, segments: tuple[str, ...], widths: list[int]) -> None:
    fused = module._parameters.get(leaf)
    if fused is None:
        return
    pieces = torch.split(fused.detach(), widths, dim=0)
    del module._parameters[leaf]
    names = []
    for segment, piece in zip(segments, pieces):
        names.append(f"{leaf}_{segment}")
        module.register_parameter(names[-1], nn.Parameter(piece.clone(), requires_grad=fused.requires_grad))
    make_local(module)
    module._fused[leaf] = names


def split_mamba_segments(mixer: Mamba2Mixer) -> None:
    """Replace the mixer's fused in_proj and conv parameters by one parameter per segment, in place.

    Numerics are unchanged: forward reads the concatenation, which equals the fused tensor.
    """
    if is_split(mixer):
        return
    in_widths, c_widths = in_proj_widths(mixer), conv_widths(mixer)
    _split_parameter(mixer.in_proj, "weight", IN_PROJ_SEGMENTS, in_widths)
    _split_parameter(mixer.in_proj, "bias", IN_PROJ_SEGMENTS, in_widths)
    _split_parameter(mixer, "conv_weight", CONV_SEGMENTS, c_widths)
    _split_parameter(mixer, "conv_bias", CONV_SEGMENTS, c_widths)
