"""Gradient-norm clipping for a parallelized model or a Pipeline: the norm of the whole model's gradient.

Gradients are DTensors on several meshes (TP x FSDP, FSDP only, TP only) or plain tensors; each group of
gradients sharing a mesh and placements gives one norm through DTensor (which sums the shards and
counts replicas once), the groups' squares add up, and under a pipeline the stages' squares are summed
over the pp ranks, so every rank sees the same total and scales by the same factor.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from .pipeline import Pipeline


def _groups(grads: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Gradients grouped by (mesh, placements), in first-seen order (the same on every peer rank)."""
    groups: dict = {}
    for grad in grads:
        key = (grad.device_mesh, grad.placements) if isinstance(grad, DTensor) else None
        groups.setdefault(key, []).append(grad)
    return list(groups.values())


def grad_norm(model) -> torch.Tensor:
    """The 2-norm of all gradients of `model` (a HybridLM, parallelized or not, or a Pipeline) as a
    plain fp32 scalar, equal on every rank; collective."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    device = grads[0].device if grads else _device_of(model)
    squares = torch.zeros((), dtype=torch.float32, device=device)
    for group in _groups(grads):
        norm = torch.nn.utils.get_total_norm(group, 2.0)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        squares = squares + norm.float() ** 2
    if isinstance(model, Pipeline) and model.mesh["pp"].size() > 1:
        dist.all_reduce(squares, group=model.mesh["pp"].get_group())
    return squares.sqrt()


def clip_grad_norm_(model, max_norm: float) -> float:
    """Scale the gradients so that their global 2-norm is at most `max_norm` (math.inf: measure only);
    returns the norm before clipping. Collective. Non-finite norms leave the gradients alone."""
    total = grad_norm(model)
    coefficient = torch.clamp(max_norm / (total + 1e-6), max=1.0).item()  # torch's clip_grad_norm_ formula
    if math.isfinite(total.item()) and coefficient < 1.0:
        for param in model.parameters():
            if param.grad is not None:
                param.grad.mul_(coefficient)
    return total.item()


def _device_of(model) -> torch.device:
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")
