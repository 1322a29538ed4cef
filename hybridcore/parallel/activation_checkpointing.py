"""Activation checkpointing of a layer: the policies that say what its backward recomputes.

    full        keep only the layer's input; the backward runs the layer's forward again
    selective   keep the outputs of its matrix products, attention and collectives too (the costly ops, and
                those that would communicate again), and recompute only the cheap ops between them:
                more memory than `full`, less recomputation (torch.utils.checkpoint's selective contexts)
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

POLICIES = ("full", "selective")

# (namespace, op) pairs whose outputs `selective` keeps; those this torch lacks are left out
_KEPT = [("aten", name) for name in (
    "mm", "addmm", "bmm", "_scaled_mm", "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention")] + [("_c10d_functional", name) for name in (
        "all_gather_into_tensor", "reduce_scatter_tensor", "all_reduce")]


@functools.cache
def kept_ops() -> frozenset:
    """The op overloads whose outputs `selective` keeps for the backward."""
    found = set()
    for namespace, name in _KEPT:
        packet = getattr(getattr(torch.ops, namespace, None), name, None)
        if packet is not None and hasattr(packet, "default"):
            found.add(packet.default)
    return frozenset(found)


def _keep_costly_outputs(ctx, op, *args, **kwargs):  # asked for every op of a checkpointed forward
    return CheckpointPolicy.MUST_SAVE if op in kept_ops() else CheckpointPolicy.PREFER_RECOMPUTE


def check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ValueError(f"checkpoint_policy must be one of {', '.join(POLICIES)}, got {policy!r}")


def checkpointed(layer: nn.Module, policy: str = "full") -> nn.Module:
    """`layer` wrapped so that its backward recomputes what `policy` does not keep."""
    check_policy(policy)
    options = {}
    if policy == "selective":
        options["context_fn"] = functools.partial(create_selective_checkpoint_contexts, _keep_costly_outputs)
    return checkpoint_wrapper(layer, preserve_rng_state=False, **options)
