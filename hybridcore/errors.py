"""Failures a person can act on: the exit codes of every command (the README's "Exit codes and
recovery" lists them), and operating-system faults told in one paragraph: the path, the cause, what
was kept, what to do."""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager

EXIT_OK = 0  # finished
EXIT_UNEXPECTED = 1  # an unexpected error (a traceback: worth a bug report)
EXIT_USAGE = 2  # a mistake in the command: a flag, a path, a locked run, a refused --overwrite
EXIT_DIVERGED = 3  # training diverged: resume from an earlier checkpoint with other settings
EXIT_IO = 4  # an operating-system fault: disk full, read-only, permission denied, ...
EXIT_STALLED = 5  # a rank stopped answering (--dist-timeout): resume once every rank is healthy
EXIT_STOPPED = 75  # stopped by SIGTERM or Ctrl-C after saving: resume it (sysexits' EX_TEMPFAIL)
EXIT_ABORTED = 130  # a second Ctrl-C: stopped at once, without saving

# errno -> (what it means, what to do)
_CAUSES = {
    errno.ENOSPC: ("no space left on the device", "free space on that filesystem (or choose a path on a larger one)"),
    errno.EDQUOT: ("the disk quota is exceeded", "free space within your quota (or choose another filesystem)"),
    errno.EROFS: ("the filesystem is read-only", "choose a path on a writable filesystem"),
    errno.EACCES: ("permission denied", "check the owner and permissions of that path"),
    errno.EPERM: ("operation not permitted", "check the owner and permissions of that path"),
    errno.EEXIST: ("it already exists", "choose another path or remove it"),
    errno.ENOTDIR: ("a part of the path is a file, not a directory", "choose a path whose parents are directories"),
    errno.EISDIR: ("it is a directory, not a file", "name a file"),
    errno.ENOENT: ("no such file or directory", "check the path"),
    errno.EIO: ("an input/output error (the disk or the network filesystem failed)", "check the device"),
    errno.ENAMETOOLONG: ("the file name is too long", "choose a shorter path"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n)"),
}


class Reported(Exception):
    """A failure whose message says all a person needs: the CLI prints it, without a traceback, and exits
    with `exit_code`. `every_rank`: under torchrun each rank prints its own (else rank 0 speaks)."""

    exit_code = EXIT_UNEXPECTED
    every_rank = False


class IOFault(Reported):
    """An operating-system fault on a path, with what the command kept and what to do next."""

    exit_code = EXIT_IO

    def __init__(self, error: OSError, doing: str, path=None, kept: str = "", then: str = ""):
        self.error, self.doing, self.kept, self.then = error, doing, kept, then
        self.path = path if error.filename is None else error.filename
        super().__init__()

    def __str__(self) -> str:
        name = errno.errorcode.get(self.error.errno, "")
        meaning, advice = _CAUSES.get(self.error.errno, (self.error.strerror or str(self.error), ""))
        where = f"{os.fspath(self.path)}: " if self.path is not None else ""
        parts = [f"{self.doing} failed: {where}{meaning}" + (f" ({name})" if name else "") + "."]
        if self.kept:
            parts.append(self.kept.rstrip(".") + ".")
        steps = [step for step in (advice, self.then) if step]
        if steps:
            text = ", then ".join(steps)
            parts.append(text[0].upper() + text[1:] + ".")
        return " ".join(parts)


class RankFailed(Reported):
    """Raised on the other ranks when rank 0 failed in a step they wait on; rank 0 reports the cause."""

    def __init__(self, exit_code: int):
        self.exit_code = exit_code
        super().__init__("rank 0 failed (its message says why)")


def causes(error: BaseException | None):
    """`error`, then what it was raised from or during, including the per-rank failures that
    torch.distributed.checkpoint gathers into one CheckpointException."""
    pending, seen = [error], set()
    while pending:
        error = pending.pop(0)
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        yield error
        failures = getattr(error, "failures", None)
        if isinstance(failures, dict):
            pending.extend(failure[0] if isinstance(failure, tuple) else failure for failure in failures.values())
        pending.append(error.__cause__ or error.__context__)


def find_os_error(error: BaseException | None) -> OSError | None:
    """The OSError with an errno behind `error` (itself, its causes, or a failure DCP gathered from a rank)."""
    return next((cause for cause in causes(error) if isinstance(cause, OSError) and cause.errno is not None), None)


def exit_code_of(error: BaseException) -> int:
    if isinstance(error, ValueError):
        return EXIT_USAGE
    if isinstance(error, Reported):
        return error.exit_code
    return EXIT_IO if find_os_error(error) is not None else EXIT_UNEXPECTED


@contextmanager
def io_faults(doing: str, kept: str = "", then: str = ""):
    """Turn an operating-system fault raised inside into an IOFault saying what was kept."""
    try:
        yield
    except (Reported, ValueError, KeyboardInterrupt, SystemExit):
        raise
    except BaseException as error:  # DCP's CheckpointException is a BaseException
        os_error = find_os_error(error)
        if os_error is None:
            raise
        raise IOFault(os_error, doing, kept=kept, then=then) from error


__all__ = ["EXIT_OK", "EXIT_UNEXPECTED", "EXIT_USAGE", "EXIT_DIVERGED", "EXIT_IO", "EXIT_STALLED", "EXIT_STOPPED",
           "EXIT_ABORTED", "Reported", "IOFault", "RankFailed", "causes", "find_os_error", "exit_code_of", "io_faults"]
