"""AdamW with weight decay on matrices only.

Decay group: every parameter with two or more dimensions (linear weights, the embedding and the LM
head, the depthwise conv kernel), as Falcon-H1 decays matrices only. No-decay group: every
one-dimensional parameter (norm weights, biases) and, whatever their shape, Mamba-2's A_log, D and
dt_bias, whose values set time scales and skip strengths rather than feature directions.
The embedding is decayed: it is a matrix, and with µP's embedding multiplier its scale is a
hyper-parameter the decay keeps in check.
"""

from __future__ import annotations

import torch
from torch import nn

NO_DECAY_NAMES = ("A_log", "D", "dt_bias")


def wants_decay(name: str, param: torch.Tensor) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim >= 2 and leaf not in NO_DECAY_NAMES


def split_by_decay(model: nn.Module) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """(decay, no_decay): (name, parameter) pairs of the trainable parameters, each parameter once."""
    decay, no_decay, seen = [], [], set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:  # a tied head is the embedding: once
            continue
        seen.add(id(param))
        (decay if wants_decay(name, param) else no_decay).append((name, param))
    return decay, no_decay


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """[decay group, no-decay group], in that order (set_hyperparameters relies on it)."""
    decay, no_decay = split_by_decay(model)
    return [{"params": [p for _, p in decay], "weight_decay": weight_decay},
            {"params": [p for _, p in no_decay], "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.95),
                    eps: float = 1e-8) -> torch.optim.AdamW:
    """torch.optim.AdamW over the two groups, fused where this build supports it, else foreach.

    A parallel layout that leaves some parameters plain beside DTensors (tensor parallel without
    sequence parallel or FSDP: the norms) gets the per-parameter loop, as multi-tensor kernels refuse
    to mix the two kinds."""
    if _mixes_plain_and_dtensor(param_groups(model, weight_decay)):
        return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, foreach=False)
    try:
        return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, fused=True)
    except (RuntimeError, ValueError, TypeError):  # e.g. a device or dtype without the fused kernel
        return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, foreach=True)


def _mixes_plain_and_dtensor(groups: list[dict]) -> bool:
    from torch.distributed.tensor import DTensor

    return any(len({isinstance(p, DTensor) for p in group["params"]}) > 1 for group in groups)


def set_hyperparameters(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """This step's lr for both groups and weight decay for the decay group (the first)."""
    for index, group in enumerate(optimizer.param_groups):
        group["lr"] = lr
        group["weight_decay"] = weight_decay if index == 0 else 0.0


__all__ = ["param_groups", "split_by_decay", "build_optimizer", "set_hyperparameters", "wants_decay",
           "NO_DECAY_NAMES"]
