"""Write a whole output directory or nothing: build it under a temporary name next to the target,
then rename it into place, so an interrupted or failed export never leaves a half-written model."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager


def check_output_dir(path: str, overwrite: bool) -> None:
    """Refuse to replace anything but an empty directory unless `overwrite`."""
    if not os.path.lexists(path) or overwrite:
        return
    if os.path.isdir(path) and not os.listdir(path):
        return
    raise ValueError(f"output path {path} already exists and is not an empty directory; "
                     f"pass overwrite=True (--overwrite on the command line) to replace it")


@contextmanager
def atomic_output_dir(path: str, overwrite: bool = False):
    """Yield a fresh directory to fill; on success it becomes `path`, on any error it is removed."""
    target = os.path.abspath(path)
    check_output_dir(target, overwrite)
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, f".{name}.partial-{uuid.uuid4().hex[:8]}")
    os.mkdir(staging)  # plain mkdir so the final directory gets the usual umask permissions
    try:
        yield staging
        check_output_dir(target, overwrite)  # again: something may have appeared while we wrote
        _replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _replace(staging: str, target: str) -> None:
    if not os.path.lexists(target):
        os.rename(staging, target)
        return
    if os.path.isdir(target) and not os.path.islink(target) and not os.listdir(target):
        os.rmdir(target)
        os.rename(staging, target)
        return
    # Move the old one aside first, so a failure between the two renames loses nothing.
    old = f"{staging}.old"
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(old, target)
        raise
    if os.path.isdir(old) and not os.path.islink(old):
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.remove(old)


def read_json_object(path: str, missing: str) -> dict:
    """The JSON object in `path`; ValueError saying `missing` when the file is absent, or what is wrong."""
    try:
        with open(path) as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise ValueError(missing) from None
    except ValueError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data
