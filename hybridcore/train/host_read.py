"""Reading device values on the host without waiting for work queued after them.

`.item()` waits for everything queued on the stream so far. The training loop queues the next step before
it reads this one's loss, and the ranks' stop vote is read a step after it is cast, so both copy their
values to pinned host memory behind the work that made them and wait, later, for that point alone.
"""

from __future__ import annotations

import torch


class HostRead:
    """`tensor`'s values on the host once the work queued before this call has run (CPU tensors: at once).
    `ready` marks that point on the device's clock (an event that keeps time)."""

    def __init__(self, tensor: torch.Tensor):
        self.ready = None
        if tensor.is_cuda:
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            host.copy_(tensor, non_blocking=True)
            self.ready = torch.cuda.Event(enable_timing=True)
            self.ready.record()
            tensor = host
        self._values = tensor

    def values(self) -> torch.Tensor:
        """The host copy, after waiting for the copy (and the work before it) to finish."""
        if self.ready is not None:
            self.ready.synchronize()
        return self._values

    def seconds_since(self, earlier: HostRead) -> float | None:
        """Seconds on the GPU's clock from `earlier`'s point to this one's (both waited for); None off the GPU."""
        if earlier.ready is None or self.ready is None:
            return None
        return earlier.ready.elapsed_time(self.ready) / 1000


__all__ = ["HostRead"]
