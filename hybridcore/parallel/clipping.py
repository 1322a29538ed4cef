"""The gradient norm of the whole model, over every rank's share, without host synchronisation.

Each rank sums the squares of the gradient elements it owns (a copy held by several ranks counts on
one of them: layouts.owned), one all-reduce adds the sums over the world, and every rank divides its
gradients by the same factor on the device (`clip_divisor`): inside the fused AdamW's step, which takes it
as its `grad_scale` (one pass fewer over the gradients), or in a pass of its own (`divide_gradients_`)
for other optimizers. train_step chooses.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from .layouts import clean_name, local_tensor, owned


def _gradients(model) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(every local gradient, the owned ones) of a ParallelModel's parts."""
    everything, counted = [], []
    for part in model.parts:
        for name, param in part.named_parameters():
            if param.grad is None:
                continue
            grad = local_tensor(param.grad)
            everything.append(grad)
            if owned(model.layouts.get(clean_name(name)), model.view_mesh_of(clean_name(name))):
                counted.append(grad)
    return everything, counted


def grad_norm(model) -> torch.Tensor:
    """The 2-norm of all gradients as an fp32 scalar tensor, equal on every rank; collective."""
    _, counted = _gradients(model)
    device = model.device
    squares = torch.zeros((), dtype=torch.float32, device=device)
    if counted:
        squares = torch.nn.utils.get_total_norm(counted, 2.0).float() ** 2
    if model.mesh is not None and dist.get_world_size() > 1:
        dist.all_reduce(squares)
    return squares.sqrt()


def clip_divisor(total: torch.Tensor, max_norm: float) -> torch.Tensor | None:
    """What the gradients are divided by so that their norm `total` is at most `max_norm`: torch's
    clip_grad_norm_ factor inverted, (total + 1e-6) / max_norm, at least 1; 1 where `total` is not finite
    (the update is skipped then). None for max_norm = math.inf (measure only)."""
    if math.isinf(max_norm):
        return None
    divisor = torch.clamp((total + 1e-6) / max_norm, min=1.0)
    return torch.where(torch.isfinite(total), divisor, torch.ones_like(divisor))


def divide_gradients_(model, divisor: torch.Tensor) -> None:
    """Divide every local gradient of a ParallelModel by a device scalar, in place."""
    everything, _ = _gradients(model)
    if everything:
        torch._foreach_div_(everything, divisor)
