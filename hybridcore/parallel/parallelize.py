"""`parallelize`: the one ordered entry point, torchtitan's order.

    1. tensor (+ sequence) parallel      heads and channels split over the tp mesh
       context parallel                  attention and Mamba-2 steps that work across the cp ranks
    2. activation checkpointing          per layer, after TP so the recompute includes its collectives
    3. torch.compile (optional)          per layer, after AC so the compiled region is the wrapped layer
    4. FSDP2                             per layer, then the root; HSDP when dp_replicate > 1

Every step happens in place on an initialised model, so the values are whatever the full model held:
the same seed gives the same weights under any layout.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh

from ..model.attention import use_sdpa_for_documents
from ..model.mamba2 import Mamba2Mixer
from ..model.model import HybridLM
from .config import MESH_DIMS, ParallelConfig
from .context_parallel import apply_context_parallel
from .fsdp import apply_fsdp, mixed_precision_policy
from .segments import split_mamba_segments
from .tensor_parallel import apply_tensor_parallel


def parallelize(model: HybridLM, parallel_config: ParallelConfig, mesh: DeviceMesh, *,
                activation_checkpointing: bool = False, checkpoint_layers: int | None = None, compile: bool = False,
                mixed_precision=None) -> HybridLM:
    """Apply TP (+SP), activation checkpointing, compile and FSDP2 to `model` in place; returns it.

    `model` must be initialised (e.g. `build_model(config, device=..., seed=...)`) and on the mesh's
    device type. `mixed_precision`: None (bf16 compute with fp32 reduction on CUDA, fp32 on CPU),
    "bf16"/"fp32", a torch.dtype, or a torch.distributed.fsdp.MixedPrecisionPolicy.
    `checkpoint_layers`: with activation checkpointing, only the layout's first N layers (None: all).
    With pp > 1 use `build_pipeline` (pipeline.py), which applies the same steps to each stage.
    """
    config = parallel_config.resolve(mesh.size())
    check_mesh(config, mesh)
    if config.pp > 1:
        raise ValueError("ParallelConfig.pp > 1: use hybridcore.parallel.build_pipeline, which splits the "
                         "model into stages and parallelizes each")
    apply_parallelisms(model, config, mesh, activation_checkpointing=activation_checkpointing,
                       checkpoint_layers=checkpoint_layers, compile=compile, mixed_precision=mixed_precision)
    return model


def apply_parallelisms(model: HybridLM, config: ParallelConfig, mesh: DeviceMesh, *, activation_checkpointing: bool,
                       compile: bool, mixed_precision, checkpoint_layers: int | None = None,
                       pipelined: bool = False) -> None:
    """The ordered steps on one model or one pipeline stage (a HybridLM holding some of the layers)."""
    param = next(model.parameters())
    if param.device.type != mesh.device_type:
        raise ValueError(f"model parameters are on {param.device.type!r} but the mesh is on "
                         f"{mesh.device_type!r}; move the model first")

    tp = mesh["tp"].size()
    if tp > 1:
        apply_tensor_parallel(model, mesh["tp"], config.sequence_parallel)
        if config.sequence_parallel:
            model.register_forward_pre_hook(_sequence_parallel_inputs(tp), with_kwargs=True)
    # Split the fused Mamba tensors in every layout, so every layout's checkpoint has the same keys.
    for module in model.modules():
        if isinstance(module, Mamba2Mixer):
            split_mamba_segments(module)
    if config.cp > 1:
        apply_context_parallel(model, mesh["cp"], tp, config.sequence_parallel)

    if activation_checkpointing:
        for name in model.leading_layer_names(checkpoint_layers):
            use_sdpa_for_documents(model.layers[name])
            model.layers[name] = checkpoint_wrapper(model.layers[name], preserve_rng_state=False)
    if compile:
        for layer in model.layers.values():
            layer.compile()

    policy = mixed_precision_policy(mixed_precision, mesh.device_type)
    data_parallel = mesh["dp_replicate"].size() * mesh["dp_shard"].size() * mesh["cp"].size()
    if data_parallel > 1 or policy.param_dtype is not None:
        # Under a pipeline every microbatch would gather the weights again: keep them gathered.
        apply_fsdp(model, mesh, policy, reshard_after_forward=not pipelined)


def check_mesh(config: ParallelConfig, mesh: DeviceMesh) -> None:
    if mesh.mesh_dim_names is None or tuple(mesh.mesh_dim_names) != MESH_DIMS:
        raise ValueError(f"the mesh must have dimensions {MESH_DIMS} (use build_mesh), "
                         f"got {mesh.mesh_dim_names}")
    sizes = dict(zip(MESH_DIMS, mesh.shape))
    for name in MESH_DIMS:
        if sizes[name] != getattr(config, name):
            raise ValueError(f"ParallelConfig.{name} is {getattr(config, name)} but the mesh's {name} "
                             f"dimension has size {sizes[name]}")


_FORWARD_SIGNATURE = inspect.signature(HybridLM.forward)


def bind_forward(model: HybridLM, args, kwargs) -> inspect.BoundArguments:
    """HybridLM.forward's arguments by name, for forward pre-hooks that fill some in."""
    return _FORWARD_SIGNATURE.bind(model, *args, **kwargs)


def _sequence_parallel_inputs(tp: int):
    """With the residual stream split along the sequence, the model can no longer read the sequence
    length off its hidden states: pass positions explicitly, and refuse lengths that do not split."""

    def hook(module: nn.Module, args, kwargs):
        bound = bind_forward(module, args, kwargs)
        input_ids = bound.arguments["input_ids"]
        batch, length = input_ids.shape[:2]
        if module.embed is None:  # a later pipeline stage: its input is this rank's sequence shard
            length *= tp
        elif length % tp:
            raise ValueError(f"sequence length {length} must be divisible by ParallelConfig.tp ({tp}) "
                             f"with sequence_parallel=True")
        if bound.arguments.get("caches") is not None:
            raise ValueError("caches (generation) are not supported with sequence_parallel=True")
        if bound.arguments.get("positions") is None and bound.arguments.get("seq_idx") is None:
            bound.arguments["positions"] = torch.arange(length, device=input_ids.device).expand(batch, -1)
        return bound.args[1:], bound.kwargs

    return hook
