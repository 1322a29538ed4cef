"""FSDP2 (`fully_shard`): one parameter group per block, then the root (embedding, final norm, head).

A block is a mixer sub-layer (P, M or *) with the MLP sub-layers that follow it ("P-" is one Falcon-H1
block): one gather and one reduce-scatter per block rather than per sub-layer halves FSDP's fixed
per-group work on the host.

Parameters are sharded over `dp_shard` (and `cp`, whose ranks hold the same weights); with
dp_replicate > 1 the mesh is 2-D and FSDP2 runs as HSDP (replicate across, shard within). Weights are
gathered in their own dtype: compute precision is the run's autocast in every layout, so a layer sees
the same fp32 master weights (and keeps an fp32 residual stream) as in one process.
"""

from __future__ import annotations

from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard

from ..model.model import HybridLM
from .mesh import mesh_dim

# Sharding over this many ranks or fewer keeps each layer's weights gathered from forward to backward:
# with two shards the memory saved is half the layer, the cost a second all-gather per layer.
RESHARD_ABOVE = 2


def fsdp_mesh(mesh: DeviceMesh) -> DeviceMesh:
    """The (dp_replicate, dp_shard x cp) mesh FSDP2 shards over; 1-D when nothing is replicated."""
    if mesh["dp_replicate"].size() == 1:
        return mesh_dim(mesh, "dp_shard_cp")
    if mesh["cp"].size() == 1:
        return mesh["dp_replicate", "dp_shard"]
    return mesh["dp_replicate", "dp_shard_cp"]


def applies(mesh: DeviceMesh | None) -> bool:
    """FSDP runs where several ranks hold the same weights for different tokens (dp x cp > 1)."""
    return mesh is not None and mesh["dp_replicate"].size() * mesh_dim(mesh, "dp_shard_cp").size() > 1


def blocks(model: HybridLM) -> list[list]:
    """The model's layers in blocks: each mixer layer with the MLP layers after it (a leading MLP alone)."""
    groups: list[list] = []
    for name, layer in model.layers.items():
        kind = model.config.layer_kinds[int(name)]
        if kind != "-" or not groups:
            groups.append([])
        groups[-1].append(layer)
    return groups


def apply_fsdp(model: HybridLM, mesh: DeviceMesh, pipelined: bool) -> None:
    dp_mesh = fsdp_mesh(mesh)
    # Under a pipeline every microbatch would gather the weights again: keep them gathered.
    reshard = mesh_dim(mesh, "dp_shard_cp").size() > RESHARD_ABOVE and not pipelined
    groups = blocks(model)
    for index, group in enumerate(groups):
        # The last block's parameters are needed again at once by backward: keep them gathered.
        fully_shard(group if len(group) > 1 else group[0], mesh=dp_mesh,
                    reshard_after_forward=reshard and index < len(groups) - 1)
    fully_shard(model, mesh=dp_mesh, reshard_after_forward=False)
    firsts = [group[0] for group in groups]
    for previous, block in zip(firsts, firsts[1:]):  # gather the next block's weights while this one computes
        previous.set_modules_to_forward_prefetch([block])
        block.set_modules_to_backward_prefetch([previous])
