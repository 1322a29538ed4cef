"""The per-step layer inputs at fixed addresses, for layers replayed as CUDA graphs.

A compiled layer's backward graph takes the tensors its forward saved from its inputs (the rotary
tables, the document ids, FlexAttention's block mask and the document runs its mask_mod reads, and for the
first layer the embedded tokens, which an eager embedding makes) as static inputs: CUDA graphs bake their
addresses into the recording, and a tensor at a new address makes every graph that reads it record again
(seconds each time, and more memory in the graph pool). These tensors are made anew every forward, and
wherever the allocator placed them differently (the third and fifth steps of a falcon-h1-0.5b run on one
H100) the graphs were recorded again. Copied into buffers kept from forward to forward, they keep their
addresses.

One forward and its backward at a time (gradient accumulation runs them in turn): a pipeline schedule's
next microbatch would overwrite a buffer that the previous one's backward still reads, so `parallelize`
keeps the addresses without a pipeline only (and `train` takes CUDA graphs in one process only).
"""

from __future__ import annotations

import torch


class InputBuffers:
    """`hold(name, tensor)`: the tensor's values in a buffer kept for its name, shape and dtype (the same
    buffer, at the same address, every time); None stays None."""

    def __init__(self):
        self._buffers: dict[tuple, torch.Tensor] = {}

    def __call__(self, name: str, tensor: torch.Tensor | None) -> torch.Tensor | None:
        if tensor is None:
            return None
        key = (name, tuple(tensor.shape), tensor.dtype, tensor.device)
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = self._buffers[key] = torch.empty(tensor.shape, dtype=tensor.dtype, device=tensor.device)
        # through a fresh alias: a tensor with gradients (the embedded tokens) then joins this forward's graph
        # only, not the previous forward's, whose saved tensors its backward freed
        return buffer.detach().copy_(tensor)

    def __len__(self) -> int:
        return len(self._buffers)


def as_is(name: str, tensor: torch.Tensor | None) -> torch.Tensor | None:
    """The `hold` of a forward that needs no fixed addresses."""
    return tensor


__all__ = ["InputBuffers", "as_is"]
