"""What each rank holds of each parameter, and the global view of it that checkpoints and norms use.

A parameter's `ParameterLayout` says how tensor parallelism split it (one dimension in even chunks,
torch.chunk's rule; or whole on every rank; or held by the first rank only); FSDP then shards what a rank
holds along dim 0 over the dp_shard x cp ranks, replicated over dp_replicate. `global_view` wraps a
rank's tensor (a parameter's local data, its gradient, an optimizer moment) as a DTensor over a mesh
whose dimensions run (tp, dp_replicate, dp_shard x cp) — tensor parallelism outermost, so FSDP's shard
of a tensor-parallel slice has the offsets DTensor computes — without moving any data. DCP saves and
loads these views, which is why a checkpoint written under one layout loads under any other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.distributed.tensor import DTensor, Replicate, Shard

_WRAPPER_PARTS = ("_checkpoint_wrapped_module", "_orig_mod", "_fsdp_wrapped_module")


def clean_name(name: str) -> str:
    """A parameter or module path as state dicts spell it (activation-checkpoint and compile wrappers removed)."""
    return ".".join(part for part in name.split(".") if part not in _WRAPPER_PARTS)


def chunk_bounds(size: int, parts: int, index: int) -> tuple[int, int]:
    """[start, end) of chunk `index` when `size` rows split into `parts` as torch.chunk and DTensor do."""
    step = -(-size // parts)
    return min(index * step, size), min((index + 1) * step, size)


@dataclass(frozen=True)
class ParameterLayout:
    global_shape: tuple[int, ...]
    tp_dim: int | None = None  # the dimension split over the tp ranks; None: whole on each (or first only)
    partial_gradient: bool = False  # whole on every tp rank, each rank's gradient a partial sum
    first_rank_only: bool = False  # held by tp rank 0 alone (a row-parallel output's bias)
    # Mixer parallelism: the half of the tp ranks that holds it (the others hold nothing of it), over
    # which tp_dim, partial_gradient and first_rank_only then apply; None: the whole tp group.
    branch: int | None = None

    def tp_placement(self):
        return Shard(self.tp_dim) if self.tp_dim is not None else Replicate()


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor of what this rank holds (FSDP's shards are DTensors on the data-parallel mesh)."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def global_view(tensor: torch.Tensor, layout: ParameterLayout, view_mesh, fsdp: bool) -> torch.Tensor:
    """`tensor` (this rank's data of a parameter-shaped tensor) as a DTensor of the whole parameter over
    `view_mesh` (ParallelModel.view_mesh_of: the ranks that hold the parameter), sharing storage; the
    tensor itself without a mesh."""
    if view_mesh is None:
        return local_tensor(tensor)
    data_placement = Shard(0) if fsdp else Replicate()
    placements = [Replicate(), data_placement]  # dp_replicate, dp_shard x cp
    mesh = view_mesh["dp_replicate", "dp_shard_cp"] if layout.first_rank_only else view_mesh
    if not layout.first_rank_only:
        placements.insert(0, layout.tp_placement())
    stride = torch.empty(layout.global_shape, device="meta").stride()
    return DTensor.from_local(local_tensor(tensor), mesh, placements, run_check=False, shape=layout.global_shape,
                              stride=stride)


def owned(layout: ParameterLayout | None, view_mesh) -> bool:
    """Whether this rank's elements of the parameter count for a global sum (each element once): a copy
    on a tp rank other than the first, or on a dp_replicate rank other than the first, does not."""
    if view_mesh is None or layout is None:
        return True
    coordinate = dict(zip(view_mesh.mesh_dim_names, view_mesh.get_coordinate()))
    if coordinate["dp_replicate"] != 0:
        return False
    return layout.tp_dim is not None or layout.first_rank_only or coordinate["tp"] == 0
