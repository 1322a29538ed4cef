"""FSDP2 (`fully_shard`): one parameter group per layer, then the root (embedding, final norm, head).

Parameters are sharded over `dp_shard` (and `cp`, whose ranks hold the same weights); with
dp_replicate > 1 the mesh is 2-D and FSDP2 runs as HSDP (replicate across, shard within).
"""

from __future__ import annotations

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from ..model.model import HybridLM
from .mesh import mesh_dim

_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
           "fp32": torch.float32, "float32": torch.float32}


def mixed_precision_policy(mixed_precision, device_type: str) -> MixedPrecisionPolicy:
    """None picks bf16 compute with fp32 gradient reduction on GPUs and plain fp32 elsewhere; a dtype
    name ("bf16", "fp32") sets the compute dtype; a MixedPrecisionPolicy is used as given."""
    if isinstance(mixed_precision, MixedPrecisionPolicy):
        return mixed_precision
    if mixed_precision is None:
        mixed_precision = "bf16" if device_type == "cuda" else "fp32"
    if isinstance(mixed_precision, torch.dtype):
        dtype = mixed_precision
    elif mixed_precision in _DTYPES:
        dtype = _DTYPES[mixed_precision]
    else:
        raise ValueError(f"mixed_precision must be None, a dtype name ({', '.join(_DTYPES)}), a torch.dtype "
                         f"or a MixedPrecisionPolicy, got {mixed_precision!r}")
    if dtype == torch.float32:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)


def fsdp_mesh(mesh: DeviceMesh) -> DeviceMesh:
    """The (dp_replicate, dp_shard x cp) mesh FSDP2 shards over; 1-D when nothing is replicated."""
    if mesh["dp_replicate"].size() == 1:
        return mesh_dim(mesh, "dp_shard_cp")
    if mesh["cp"].size() == 1:
        return mesh["dp_replicate", "dp_shard"]
    return mesh["dp_replicate", "dp_shard_cp"]


def apply_fsdp(model: HybridLM, mesh: DeviceMesh, policy: MixedPrecisionPolicy,
               reshard_after_forward: bool = True) -> None:
    dp_mesh = fsdp_mesh(mesh)
    layers = list(model.layers.values())
    for index, layer in enumerate(layers):
        # The last layer's parameters are needed again at once by backward: keep them gathered.
        fully_shard(layer, mesh=dp_mesh, mp_policy=policy,
                    reshard_after_forward=reshard_after_forward and index < len(layers) - 1)
    fully_shard(model, mesh=dp_mesh, mp_policy=policy, reshard_after_forward=False)
