"""Mixer parallelism: the two branches of each parallel-hybrid (P) layer on the two halves of the
tensor-parallel ranks at the same time (the Falcon-H1 report, section 3.3).

Under ordinary tensor parallelism every tp rank holds 1/tp of both branches of a P layer and computes
both, one after the other. Under mixer parallelism the tp ranks split into two halves of tp / 2: one
half holds the layer's attention, split tp / 2 ways, the other its Mamba-2, split tp / 2 ways, and each
rank computes its own branch only. Nothing else moves: the layer's input is gathered over the whole tp
group as before, and the region's exit sums the partial outputs over the whole group, which adds up
each half's shares of its own branch, so attention + Mamba-2 arrives in the same one reduce-scatter.
The other layer kinds keep ordinary tp over the whole group.

    split        attention on the first half of the tp ranks in every P layer, Mamba-2 on the second
    interleaved  the assignment alternates from one P layer to the next, so every rank holds and
                 computes attention in half of the P layers and Mamba-2 in the other half

A layer class declares its branches as `parallel_branches` (model/layers.py); tensor_parallel.py splits
each branch over its half, and a rank of the other half holds None in its place.
"""

from __future__ import annotations

from ..config import ModelConfig
from ..model.layers import LAYER_CLASSES


def branch_halves(config: ModelConfig, mode: str | None) -> dict[str, int]:
    """{module path of a branch, "layers.3.attention": the half of the tp ranks that holds it (0 or 1)}
    for every layer whose class declares two parallel_branches; empty when `mode` is None. Layers are
    counted over the whole depth, so every pipeline stage agrees on the assignment."""
    if mode is None:
        return {}
    halves, count = {}, 0
    for index, kind in enumerate(config.layer_kinds):
        branches = getattr(LAYER_CLASSES[kind], "parallel_branches", ())
        if len(branches) != 2:
            continue
        first = count % 2 if mode == "interleaved" else 0
        count += 1
        for offset, branch in enumerate(branches):
            halves[f"layers.{index}.{branch}"] = (first + offset) % 2
    return halves


def branch_of(module_name: str, halves: dict[str, int]) -> str | None:
    """The branch path ("layers.3.attention") that `module_name` is or lies inside, if any."""
    path = ".".join(module_name.split(".")[:3])
    return path if path in halves else None


def check_mixer_parallel(config: ModelConfig, mode: str | None) -> None:
    if mode is not None and not branch_halves(config, mode):
        raise ValueError(f"ParallelConfig.mixer_parallel={mode!r} splits the branches of P layers, and the layout "
                         f"{config.layout!r} has none: leave mixer parallelism off for it")


__all__ = ["branch_halves", "branch_of", "check_mixer_parallel"]
