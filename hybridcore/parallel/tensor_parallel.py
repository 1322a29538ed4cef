"""Tensor parallelism (Megatron-style) and sequence parallelism for every layer kind, on DTensor.

Per layer, on the tp mesh:
    attention   q, k, v colwise (query and key/value heads split across ranks), o rowwise
    MLP         gate, up colwise; down rowwise
    Mamba-2     each in_proj segment z, x, B, C, dt colwise by heads/groups (segments.py), conv channels,
                A_log, D, dt_bias and the gated-norm weight sharded by head (groups stay whole on a
                rank, so the gated RMSNorm is local), out_proj rowwise. With one group (Falcon-H1 up
                to 7B) B and C are replicated on every rank and the norm's statistics are summed over
                the tp ranks; other group counts must divide by tp
    embedding   rowwise over the vocabulary; LM head colwise over the vocabulary, logits gathered

The residual stream between layers is a plain tensor: the full sequence on every tp rank, or with
sequence parallelism this rank's 1/tp of the sequence. Each layer's pre-norm hands its branches one
Replicate DTensor `u` (with sequence parallelism the norm runs on the shard and its output is
all-gathered once, even when two branches read it); the branches' row-parallel outputs come back
reduced (all-reduce, or reduce-scatter onto the sequence shard). In a parallel-hybrid block the two
branches reduce separately: the model adds them to the residual one after the other, and summing their
partial outputs first would change fp32 rounding against the single-process model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import (ColwiseParallel, PrepareModuleOutput, RowwiseParallel,
                                               SequenceParallel, parallelize_module)

from ..config import ModelConfig
from ..model.attention import Attention
from ..model.mamba2 import Mamba2Mixer
from ..model.mlp import SwiGLU
from ..model.model import HybridLM
from .segments import make_local, mix_in, split_mamba_segments


def check_tensor_parallel(config: ModelConfig, tp: int) -> None:
    """ValueError naming the field when a layer cannot be split `tp` ways."""
    if tp == 1:
        return
    kinds = set(config.layer_kinds)
    needs = []
    if kinds & {"P", "*"}:
        needs += [("num_heads", config.num_heads), ("num_kv_heads", config.num_kv_heads)]
    if kinds & {"P", "M"}:
        needs += [("mamba_n_heads", config.mamba_n_heads), ("mamba_n_groups", config.mamba_n_groups)]
    if "-" in kinds:
        needs += [("d_ff", config.d_ff)]
    for field, value in needs:
        if field == "mamba_n_groups" and value == 1:
            continue  # one group: B and C replicated, see parallelize_mamba
        if value % tp:
            hint = " or be 1" if field == "mamba_n_groups" else ""
            raise ValueError(f"ModelConfig.{field} ({value}) must be divisible by ParallelConfig.tp ({tp}){hint}")


def _shard_parameters(module: nn.Module, mesh: DeviceMesh, names: list[str]) -> None:
    """Turn the named direct parameters of `module` into Shard(0) DTensors on `mesh`."""
    for name in names:
        param = module._parameters.get(name)
        if param is None:
            continue
        sharded = distribute_tensor(param.detach(), mesh, [Shard(0)])
        module.register_parameter(name, nn.Parameter(sharded, requires_grad=param.requires_grad))


def _replicate_parameters(module: nn.Module, mesh: DeviceMesh, names: list[str]) -> None:
    for name in names:
        param = module._parameters.get(name)
        if param is not None:
            replicated = distribute_tensor(param.detach(), mesh, [Replicate()])
            module.register_parameter(name, nn.Parameter(replicated, requires_grad=param.requires_grad))


def _to_local_partial_grad(module, args):
    """Mamba mixer input: the Replicate DTensor `u` becomes a plain tensor. Its gradient from this
    rank's heads is only a partial sum, which the norm's DTensor backward reduces with the others."""
    u, *rest = args
    if isinstance(u, DTensor):
        u = u.to_local(grad_placements=[Partial()])
    return (u, *rest)


def sum_over_ranks(tensor: torch.Tensor, mesh: DeviceMesh) -> torch.Tensor:
    """Sum of `tensor` over the ranks of a 1-D mesh, differentiable (an all-gather and a local sum:
    the backward reduce-scatters, so every rank's input receives the gradient of every rank's use)."""
    stacked = DTensor.from_local(tensor.unsqueeze(0), mesh, [Shard(0)], run_check=False)
    return stacked.redistribute(mesh, [Replicate()]).to_local(grad_placements=[Partial()]).sum(0)


class SharedGroupGate:
    """Mixin for a Mamba mixer whose one B/C group spans the tp ranks: the gated RMSNorm's mean of
    squares is taken over the whole d_ssm, summed across ranks (the model's gate otherwise)."""

    def gate(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if not self.use_rms_norm:
            return super().gate(y, z)
        mesh = self.__dict__["_tp_mesh"]
        dtype = y.dtype
        y = y.float()
        if not self.norm_before_gate:
            y = y * F.silu(z.float())
        mean_square = sum_over_ranks(y.pow(2).sum(-1, keepdim=True), mesh) / (y.shape[-1] * mesh.size())
        y = y * torch.rsqrt(mean_square + self.norm_eps) * self.norm_weight.float()
        if self.norm_before_gate:
            y = y * F.silu(z.float())
        return y.to(dtype)


def parallelize_mamba(mixer: Mamba2Mixer, mesh: DeviceMesh, sequence_parallel: bool) -> None:
    tp = mesh.size()
    shared_group = mixer.n_groups % tp != 0  # then n_groups == 1 (check_tensor_parallel)
    split_mamba_segments(mixer)
    group_names = {"weight_B", "weight_C", "bias_B", "bias_C", "conv_weight_B", "conv_weight_C", "conv_bias_B",
                   "conv_bias_C"} if shared_group else set()
    for module, names in ((mixer.in_proj, list(mixer.in_proj._parameters)),
                          (mixer, ["conv_weight_x", "conv_weight_B", "conv_weight_C", "conv_bias_x", "conv_bias_B",
                                   "conv_bias_C", "dt_bias", "A_log", "D", "norm_weight"])):
        _shard_parameters(module, mesh, [n for n in names if n not in group_names])
        _replicate_parameters(module, mesh, [n for n in names if n in group_names])
    make_local(mixer)
    parallelize_module(mixer.out_proj, mesh, RowwiseParallel(output_layouts=Shard(1) if sequence_parallel
                                                             else Replicate()))
    # The module computes with its local head counts from here on.
    mixer.num_heads //= tp
    mixer.d_ssm //= tp
    if shared_group:
        mix_in(mixer, SharedGroupGate)
        mixer.__dict__["_tp_mesh"] = mesh
    else:
        mixer.n_groups //= tp
    mixer.register_forward_pre_hook(_to_local_partial_grad)


def parallelize_attention(attention: Attention, mesh: DeviceMesh, sequence_parallel: bool) -> None:
    tp = mesh.size()
    parallelize_module(attention, mesh, {
        "q_proj": ColwiseParallel(), "k_proj": ColwiseParallel(), "v_proj": ColwiseParallel(),
        "o_proj": RowwiseParallel(output_layouts=Shard(1) if sequence_parallel else Replicate()),
    })
    attention.num_heads //= tp
    attention.num_kv_heads //= tp


def parallelize_mlp(mlp: SwiGLU, mesh: DeviceMesh, sequence_parallel: bool) -> None:
    parallelize_module(mlp, mesh, {
        "gate_proj": ColwiseParallel(), "up_proj": ColwiseParallel(),
        "down_proj": RowwiseParallel(output_layouts=Shard(1) if sequence_parallel else Replicate()),
    })


def parallelize_pre_norm(norm: nn.Module, mesh: DeviceMesh, sequence_parallel: bool) -> None:
    """The layer's pre-norm hands its branches one Replicate DTensor."""
    if sequence_parallel:
        parallelize_module(norm, mesh, SequenceParallel())  # weight Replicate, runs on the sequence shard
        gather = PrepareModuleOutput(output_layouts=Shard(1), desired_output_layouts=Replicate(),
                                     use_local_output=False)
    else:
        gather = PrepareModuleOutput(output_layouts=Replicate(), desired_output_layouts=Replicate(),
                                     use_local_output=False)
    parallelize_module(norm, mesh, gather)


def apply_tensor_parallel(model: HybridLM, mesh: DeviceMesh, sequence_parallel: bool) -> None:
    """Shard `model` in place over the 1-D tp mesh (see the module docstring)."""
    check_tensor_parallel(model.config, mesh.size())
    tied = model.config.tie_embeddings and model.embed is not None and model.lm_head is not None
    residual = Shard(1) if sequence_parallel else Replicate()
    if model.embed is not None:
        parallelize_module(model.embed, mesh, RowwiseParallel(input_layouts=Replicate(), output_layouts=residual))
    for layer in model.layers.values():
        parallelize_pre_norm(layer.norm, mesh, sequence_parallel)
        if hasattr(layer, "mamba"):
            parallelize_mamba(layer.mamba, mesh, sequence_parallel)
        if hasattr(layer, "attention"):
            parallelize_attention(layer.attention, mesh, sequence_parallel)
        if hasattr(layer, "mlp"):
            parallelize_mlp(layer.mlp, mesh, sequence_parallel)
    if model.final_norm is not None and sequence_parallel:
        parallelize_module(model.final_norm, mesh, SequenceParallel())
    if model.lm_head is not None:
        parallelize_module(model.lm_head, mesh, ColwiseParallel(input_layouts=residual,
                                                                output_layouts=Replicate()))
    if tied:  # both are Shard(0) over the vocabulary: share the one DTensor again
        model.lm_head.weight = model.embed.weight
