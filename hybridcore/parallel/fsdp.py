"""FSDP2 (`fully_shard`): one parameter group per layer, then the root (embedding, final norm, head).

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


def apply_fsdp(model: HybridLM, mesh: DeviceMesh, pipelined: bool) -> None:
    dp_mesh = fsdp_mesh(mesh)
    # Under a pipeline every microbatch would gather the weights again: keep them gathered.
    reshard = mesh_dim(mesh, "dp_shard_cp").size() > RESHARD_ABOVE and not pipelined
    layers = list(model.layers.values())
    for index, layer in enumerate(layers):
        # The last layer's parameters are needed again at once by backward: keep them gathered.
        fully_shard(layer, mesh=dp_mesh, reshard_after_forward=reshard and index < len(layers) - 1)
    fully_shard(model, mesh=dp_mesh, reshard_after_forward=False)
    for previous, layer in zip(layers, layers[1:]):  # gather the next layer's weights while this one computes
        previous.set_modules_to_forward_prefetch([layer])
        layer.set_modules_to_backward_prefetch([previous])
