"""Which rank stopped answering, when a collective times out under torchrun (--dist-timeout).

A collective that times out says only that it waited too long. So every rank bumps a counter in the
launcher's TCPStore (the one torchrun's rendezvous serves at MASTER_ADDR:MASTER_PORT) once a second
from a daemon thread; after a timeout a surviving rank reads the counters twice, a few beats apart,
and the ranks whose counters stood still are the ones stopped (SIGSTOP, a debugger), hung or dead.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import timedelta

from ..errors import EXIT_STALLED, Reported, causes

_PREFIX = "hybridcore/heartbeat/"
_INTERVAL_S = 1.0


class CollectiveTimeout(Reported):
    exit_code = EXIT_STALLED
    every_rank = True  # rank 0 may be the one that stopped: every survivor says what it saw


class Heartbeats:
    def __init__(self, rank: int, world_size: int):
        self.rank, self.world_size = rank, world_size
        self.store = _client()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="hybridcore-heartbeat", daemon=True)
        self.thread.start()

    @classmethod
    def start(cls, rank: int, world_size: int) -> "Heartbeats | None":
        """None in one process, or where the launcher's store cannot be reached (then timeouts name no rank)."""
        if world_size <= 1 or "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
            return None
        try:
            return cls(rank, world_size)
        except Exception:  # noqa: BLE001 - the heartbeat only improves a message; the run does not need it
            return None

    def _beat(self) -> None:
        while not self.stopped.is_set():
            try:
                self.store.add(f"{_PREFIX}{self.rank}", 1)
            except Exception:  # noqa: BLE001 - the store went away (the job is ending)
                return
            self.stopped.wait(_INTERVAL_S)

    def silent_ranks(self) -> list[int] | None:
        """Ranks whose heartbeat stood still over three beats (None: the store did not answer)."""
        try:
            store = _client()  # its own connection: the beating thread keeps using the other one
            first = [store.add(f"{_PREFIX}{rank}", 0) for rank in range(self.world_size)]
            time.sleep(3 * _INTERVAL_S)
            second = [store.add(f"{_PREFIX}{rank}", 0) for rank in range(self.world_size)]
        except Exception:  # noqa: BLE001 - the store's host may be the rank that stopped
            return None
        return [rank for rank in range(self.world_size) if rank != self.rank and first[rank] == second[rank]]

    def stop(self) -> None:
        self.stopped.set()


def _client():
    import torch.distributed as dist

    return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                         timeout=timedelta(seconds=5), wait_for_workers=False)


_TIMEOUT_WORDS = ("Timed out waiting", "collective operation timeout")  # gloo's, and NCCL's watchdog's


def is_collective_timeout(error: BaseException) -> bool:
    """A gloo or NCCL collective that waited longer than the process group's timeout (also inside DCP)."""
    return any(isinstance(cause, RuntimeError) and any(words in str(cause) for words in _TIMEOUT_WORDS)
               for cause in causes(error))


def describe_timeout(rank: int, timeout_s: float, heartbeats: Heartbeats | None, kept: str) -> CollectiveTimeout:
    silent = heartbeats.silent_ranks() if heartbeats is not None else None
    if silent:
        names = ", ".join(str(r) for r in silent)
        who = (f"rank {names} stopped answering" if len(silent) == 1 else f"ranks {names} stopped answering") + \
            " (its process is stopped, hung or dead: its heartbeat stood still)"
    elif silent is None:
        who = "the other ranks could not be asked which of them stopped (the launcher's store did not answer)"
    else:
        who = ("every rank is still alive, so one is stuck inside a long operation; raise --dist-timeout if a "
               "step, an evaluation or a checkpoint legitimately takes longer")
    return CollectiveTimeout(f"rank {rank} waited longer than --dist-timeout {timeout_s:g}s in a collective "
                             f"operation: {who}. {kept.rstrip('.')}. Once every rank is healthy, continue with "
                             f"--resume")


__all__ = ["Heartbeats", "CollectiveTimeout", "is_collective_timeout", "describe_timeout"]
