"""The device mesh: one named dimension per kind of parallelism, size-1 dimensions included.

Besides the five named dimensions, `build_mesh` creates the flattened ones the rest of the package asks
for by name, and `view_mesh` the (tp, dp_replicate, dp_shard x cp) mesh of layouts.global_view (with
mixer parallelism also `branch_view_mesh`, the same over this rank's half of the tp ranks):
    dp           dp_replicate x dp_shard       which slice of the global batch a rank reads
    dp_shard_cp  dp_shard x cp                 what FSDP shards over (context-parallel ranks hold
                                               the same weights, so they share the shards)
    dp_cp        dp_replicate x dp_shard x cp  over which the loss is averaged
"""

from __future__ import annotations

import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from .config import MESH_DIMS, ParallelConfig


def build_mesh(parallel_config: ParallelConfig, device_type: str) -> DeviceMesh:
    """DeviceMesh over (pp, dp_replicate, dp_shard, cp, tp) for the already-initialised process group."""
    if not dist.is_initialized():
        raise RuntimeError("build_mesh needs torch.distributed to be initialised (run under torchrun, "
                           "or call torch.distributed.init_process_group first)")
    config = parallel_config.resolve(dist.get_world_size())
    mesh = init_device_mesh(device_type, config.mesh_shape(), mesh_dim_names=MESH_DIMS)
    # Newer torch asks callers to keep the flattened meshes rather than slice them from the root.
    flattened = {name: mesh[dims]._flatten(name) for name, dims in FLATTENED_DIMS.items()}
    # Tensor parallelism outermost: FSDP's shard of a tensor-parallel slice is then an ordinary nested
    # shard of the whole parameter. Built by every rank (process groups are made collectively).
    ranks = mesh.mesh.permute(0, 4, 1, 2, 3).flatten(3)  # pp, tp, dp_replicate, dp_shard x cp
    views = DeviceMesh(device_type, ranks, mesh_dim_names=("pp", "tp", "dp_replicate", "dp_shard_cp"))
    flattened["view"] = views["tp", "dp_replicate", "dp_shard_cp"]
    if config.mixer_parallel is not None:  # the same view over this rank's half of the tp ranks
        pp, tp, replicate, shard = ranks.shape
        halves = ranks.reshape(pp, 2, tp // 2, replicate, shard)
        branch = DeviceMesh(device_type, halves, mesh_dim_names=("pp", "half", "tp", "dp_replicate", "dp_shard_cp"))
        flattened["branch_view"] = branch["tp", "dp_replicate", "dp_shard_cp"]
    _FLATTENED[id(mesh)] = (mesh, flattened)
    return mesh


FLATTENED_DIMS = {"dp": ("dp_replicate", "dp_shard"), "dp_shard_cp": ("dp_shard", "cp"),
                  "dp_cp": ("dp_replicate", "dp_shard", "cp")}
_FLATTENED: dict[int, tuple[DeviceMesh, dict[str, DeviceMesh]]] = {}


def mesh_dim(mesh: DeviceMesh, name: str) -> DeviceMesh:
    """The 1-D mesh of a named dimension, flattened ones (dp, dp_shard_cp, dp_cp) included."""
    if name in FLATTENED_DIMS or name == "view":
        entry = _FLATTENED.get(id(mesh))
        if entry is None or entry[0] is not mesh:
            raise ValueError(f"mesh dimension {name!r} exists only on meshes made by build_mesh")
        return entry[1][name]
    return mesh[name]


def view_mesh(mesh: DeviceMesh | None) -> DeviceMesh | None:
    """This pipeline stage's (tp, dp_replicate, dp_shard_cp) mesh of the same ranks (layouts.global_view)."""
    return None if mesh is None else mesh_dim(mesh, "view")


def branch_view_mesh(mesh: DeviceMesh | None) -> DeviceMesh | None:
    """Under mixer parallelism, the view mesh of this rank's half of the tp ranks: (tp / 2, dp_replicate,
    dp_shard_cp), its tp dimension the group a branch of a P layer is split over (None without)."""
    if mesh is None:
        return None
    entry = _FLATTENED.get(id(mesh))
    return entry[1].get("branch_view") if entry is not None and entry[0] is mesh else None


def data_parallel_rank(mesh: DeviceMesh | None) -> tuple[int, int]:
    """(index of this rank's slice of the global batch, number of slices)."""
    if mesh is None:
        return 0, 1
    dp = mesh_dim(mesh, "dp")
    return dp.get_local_rank(), dp.size()
