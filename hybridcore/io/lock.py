"""Advisory locks (flock) that say who holds them: the lock file records host, pid, start time and
command line of its holder. The operating system drops the lock when the holder's process ends, however
it ends (kill -9, a crash), so a dead holder never blocks anyone; what it wrote is then reported as a
stale lock when the next process takes the file over."""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import json_codec

_RETRIES = 5  # a probe by another process holds the lock shared for an instant: try again before refusing


@dataclass
class Holder:
    host: str
    pid: int
    started: float
    command: str = ""

    @classmethod
    def this_process(cls) -> "Holder":
        command = " ".join(sys.argv[1:])
        return cls(socket.gethostname(), os.getpid(), time.time(), command[:97] + "..." if len(command) > 100
                   else command)

    def describe(self) -> str:
        if self.pid <= 0:
            return "another process (it recorded nothing about itself)"
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        command = f", running `{self.command}`" if self.command else ""
        return f"pid {self.pid} on host {self.host} since {started}{command}"


UNRECORDED = Holder("", 0, 0.0)  # a holder that has not written its record yet


class Locked(ValueError):
    """Somebody else holds the lock (a user-facing refusal: the CLI prints it and exits 2)."""

    def __init__(self, path: Path, holder: Holder | None, message: str | None = None):
        self.path, self.holder = path, holder
        who = (holder or UNRECORDED).describe()
        super().__init__(message or f"{path} is locked by {who}")


def _read_holder(fd: int) -> Holder | None:
    try:
        data = json_codec.loads(os.pread(fd, 65536, 0).decode("utf-8"))
        return Holder(str(data["host"]), int(data["pid"]), float(data["started"]), str(data.get("command", "")))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None  # empty (released cleanly) or unreadable


class FileLock:
    """An exclusive lock on `path` (created if needed). acquire() raises Locked when it is held."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.fd: int | None = None

    def acquire(self) -> Holder | None:
        """Take the lock; returns the previous holder when it ended without releasing (a stale lock)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        for attempt in range(_RETRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == _RETRIES - 1:
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise Locked(self.path, holder) from None
                time.sleep(0.05)
        stale = _read_holder(fd)
        data = (json_codec.dumps(vars(Holder.this_process())) + "\n").encode("utf-8")
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        self.fd = fd
        return stale

    def release(self) -> None:
        """Empty the file (a clean release leaves no stale record), then unlock. The file stays: deleting
        it would let two processes lock two different files of one name."""
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass  # a read-only or full filesystem: the lock is still dropped below
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def holder_of(path: str | Path) -> Holder | None:
    """Who holds the lock on `path` now (None: nobody, or no such file), without taking it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd) or UNRECORDED
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def try_lock_fd(fd: int) -> bool:
    """Take an exclusive lock on an open file or directory if nobody holds it (True), else False."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


__all__ = ["FileLock", "Holder", "Locked", "holder_of", "try_lock_fd"]
