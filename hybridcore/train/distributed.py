"""Process-group helpers: the same code runs in one process or under torchrun.

Under torchrun (WORLD_SIZE > 1 in the environment) the trainer initialises the default group itself:
NCCL on CUDA, gloo on CPU. Without it every helper degrades to the single-process answer.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from .host_read import HostRead


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


_OWNED = False  # whether init_from_environment made the group (then shutdown tears it down)


def init_from_environment(device: str, timeout_s: float | None = None) -> tuple[int, int, torch.device]:
    """(rank, world_size, this rank's device); initialises the process group under torchrun.

    timeout_s bounds every collective (and the start-up rendezvous): a rank that stops answering ends
    the run after that long instead of the backend's default (30 minutes for gloo, 10 for NCCL)."""
    global _OWNED
    wanted = int(os.environ.get("WORLD_SIZE", "1"))
    if wanted > 1 and not is_distributed():
        timeout = timedelta(seconds=timeout_s) if timeout_s is not None else None
        dist.init_process_group("nccl" if device == "cuda" else "gloo", timeout=timeout)
        _OWNED = True
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank(), world_size(), torch.device("cuda", local)
    return rank(), world_size(), torch.device("cpu")


def shutdown(clean: bool) -> None:
    """Destroy the group init_from_environment made, after a barrier when the run ended cleanly. A rank that
    exits with the group alive can abort in gloo's threads at interpreter exit ("terminate called without an
    active exception", pytorch/pytorch#190489), failing a run that had finished."""
    global _OWNED
    if _OWNED and is_distributed():
        if clean:
            dist.barrier()
        dist.destroy_process_group()
    _OWNED = False


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        value = value.clone()
        dist.all_reduce(value)
    return value


def on_rank_zero(work):
    """Run `work()` on rank 0 alone and give every rank its result; collective. When it raises, rank 0
    re-raises it and the other ranks raise RankFailed with the matching exit code, so nobody waits."""
    from ..errors import RankFailed, exit_code_of

    result, code, failure = None, 0, None
    if rank() == 0:
        try:
            result = work()
        except BaseException as error:
            code, failure = exit_code_of(error), error
    if is_distributed():
        box = [(result, code)]
        dist.broadcast_object_list(box, src=0)
        result, code = box[0]
    if failure is not None:
        raise failure
    if code:
        raise RankFailed(code)
    return result


def any_rank(flag: bool, device) -> bool:
    """True when `flag` is true on any rank (e.g. a SIGTERM that reached only some)."""
    if not is_distributed():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value)
    return bool(value.item() > 0)


class StopVote:
    """Whether any rank has been asked to stop, agreed by every rank without the host waiting for the device
    at each step (which `any_rank` does, and which would keep the training loop from launching the next step
    while this one runs): each call queues this step's vote, an all-reduce, behind the step's work and
    returns the vote of the call before. Every rank casts the same votes in the same order, so all stop
    after the same step, one step after the signal reached any of them. In one process: the flag itself."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.previous = None  # the last vote's sum, on its way to the host

    def __call__(self, flag: bool) -> bool:
        if not is_distributed():
            return flag
        vote = torch.full((1,), 1.0 if flag else 0.0, device=self.device)  # a fill: no copy from the host to wait for
        dist.all_reduce(vote, async_op=True).wait()  # NCCL: the stream waits, the host does not
        previous, self.previous = self.previous, HostRead(vote)
        return previous is not None and bool(previous.values().item() > 0)
