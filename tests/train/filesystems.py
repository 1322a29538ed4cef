"""Real filesystems for the fault tests: a small tmpfs (a full disk) and a read-only directory. Mounting
needs root; without it a read-only directory is made with chmod, and a full disk is not available."""

from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import contextmanager

import pytest


def _mount(*args) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


def _umount(path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextmanager
def small_tmpfs(path, kilobytes: int):
    """`path` as a tmpfs of `kilobytes` (skips the test where mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    if not _mount("-t", "tmpfs", "-o", f"size={kilobytes}k", "tmpfs", str(path)):
        pytest.skip("mounting a small tmpfs needs root (the injected-ENOSPC tests cover this fault)")
    try:
        yield path
    finally:
        _umount(path)


@contextmanager
def read_only(path):
    """Make the directory `path` read-only for this process: remounted read-only (as root, over a tmpfs that
    `writable_tmpfs` made), or every directory and file under it made unwritable otherwise."""
    if os.geteuid() == 0:
        if not _mount("-o", "remount,ro", str(path)):
            pytest.skip("a read-only directory for root needs a remountable tmpfs")
        try:
            yield path
        finally:
            _mount("-o", "remount,rw", str(path))
        return
    modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")]}
    for p in reversed(list(modes)):  # files first, then the directories holding them
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        yield path
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


@contextmanager
def writable_tmpfs(path, kilobytes: int = 65536):
    """A tmpfs at `path` as root (so `read_only` can remount it), a plain directory otherwise."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        yield path
        return
    if not _mount("-t", "tmpfs", "-o", f"size={kilobytes}k", "tmpfs", str(path)):
        pytest.skip("a read-only directory for root needs a tmpfs, and mounting one failed")
    try:
        yield path
    finally:
        _umount(path)
