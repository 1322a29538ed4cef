"""Differentiable collectives on plain tensors, through torch's functional collectives (which
torch.compile traces into the graph). Each pairs a forward with the backward that keeps gradients exact:

    copy_to_ranks        identity        | all-reduce      (a replicated input read by every rank's share)
    sum_over_ranks       all-reduce      | identity        (partial outputs summed, the result replicated)
    all_sum              all-reduce      | all-reduce      (a statistic every rank then uses)
    gather_along         all-gather      | reduce-scatter  (sequence shards -> the whole sequence)
    reduce_scatter_along reduce-scatter  | all-gather      (partial outputs -> this rank's shard, summed)
"""

from __future__ import annotations

import torch
import torch.distributed._functional_collectives as funcol


def _ready(tensor: torch.Tensor) -> torch.Tensor:
    """The result of a functional collective, waited for (eager mode returns an async wrapper)."""
    if isinstance(tensor, funcol.AsyncCollectiveTensor):
        return tensor.wait()
    return tensor


def all_reduce(tensor: torch.Tensor, op: str, group) -> torch.Tensor:
    """Not differentiable: "sum", "max", ... over `group`."""
    return _ready(funcol.all_reduce(tensor.contiguous(), op, group))


# torch 2.13 renames the tensor collectives "_single"; 2.11 has the older names only.
_GATHER = getattr(funcol, "all_gather_single", None) or funcol.all_gather_tensor
_REDUCE_SCATTER = getattr(funcol, "reduce_scatter_single", None) or funcol.reduce_scatter_tensor


def _all_gather(tensor: torch.Tensor, dim: int, group) -> torch.Tensor:
    return _ready(_GATHER(tensor.contiguous(), dim, group))


def _reduce_scatter(tensor: torch.Tensor, dim: int, group) -> torch.Tensor:
    return _ready(_REDUCE_SCATTER(tensor.contiguous(), "sum", dim, group))


class _CopyToRanks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad):
        return all_reduce(grad, "sum", ctx.group), None


class _SumOverRanks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        return all_reduce(x, "sum", group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _AllSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return all_reduce(x, "sum", group)

    @staticmethod
    def backward(ctx, grad):
        return all_reduce(grad, "sum", ctx.group), None


class _GatherAlong(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim, group):
        ctx.dim, ctx.group = dim, group
        return _all_gather(x, dim, group)

    @staticmethod
    def backward(ctx, grad):
        return _reduce_scatter(grad, ctx.dim, ctx.group), None, None


class _ReduceScatterAlong(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dim, group):
        ctx.dim, ctx.group = dim, group
        return _reduce_scatter(x, dim, group)

    @staticmethod
    def backward(ctx, grad):
        return _all_gather(grad, ctx.dim, ctx.group), None, None


def copy_to_ranks(x: torch.Tensor, group) -> torch.Tensor:
    return _CopyToRanks.apply(x, group)


def sum_over_ranks(x: torch.Tensor, group) -> torch.Tensor:
    return _SumOverRanks.apply(x, group)


def all_sum(x: torch.Tensor, group) -> torch.Tensor:
    return _AllSum.apply(x, group)


def gather_along(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    return _GatherAlong.apply(x, dim, group)


def reduce_scatter_along(x: torch.Tensor, dim: int, group) -> torch.Tensor:
    return _ReduceScatterAlong.apply(x, dim, group)
