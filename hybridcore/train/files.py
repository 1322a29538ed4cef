"""Small file helpers: atomic JSON writes and strict JSON for configs holding infinity."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path


def json_safe(value):
    """Non-finite floats as strings ("inf", "-inf", "nan"), so files stay strict JSON.

    ModelConfig reads them back: float("inf") accepts the string."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def fsync_dir(path: str | Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse directory fsync; the rename is still atomic
    finally:
        os.close(fd)


def write_json_atomic(path: str | Path, data, indent: int | None = 2, default=None) -> None:
    """Write to a temporary name in the same directory, flush to disk, then rename into place.
    `default` as in json.dump: turns values JSON has no type for into ones it has."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as handle:
        json.dump(json_safe(data), handle, indent=indent, allow_nan=False, default=default)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_json(path: str | Path, what: str) -> dict:
    try:
        with open(path) as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise ValueError(f"{path}: missing ({what})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({what}): {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object ({what})")
    return data
