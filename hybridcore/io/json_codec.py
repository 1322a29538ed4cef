"""The one JSON encoding of hybridcore's files: strict JSON, with non-finite floats written as
transformers writes them in config.json ({"__float__": "Infinity"}), so every file we write is read
back exactly by us, by transformers and by any strict JSON parser."""

from __future__ import annotations

import json
import math
from pathlib import Path

FLOAT_TAG = "__float__"
_NAMES = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}


def encode(value):
    """`value` with every non-finite float replaced by its tagged object (tuples become lists)."""
    if isinstance(value, float) and not math.isfinite(value):
        return {FLOAT_TAG: "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")}
    if isinstance(value, dict):
        return {key: encode(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(item) for item in value]
    return value


def decode(value):
    """The inverse of `encode`: tagged objects back to floats."""
    if isinstance(value, dict):
        if set(value) == {FLOAT_TAG} and value[FLOAT_TAG] in _NAMES:
            return _NAMES[value[FLOAT_TAG]]
        return {key: decode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [decode(item) for item in value]
    return value


def dumps(value, indent: int | None = None, sort_keys: bool = False, default=None) -> str:
    """`default` as in json.dumps: turns values JSON has no type for into ones it has."""
    return json.dumps(encode(value), indent=indent, sort_keys=sort_keys, allow_nan=False, default=default)


def loads(text: str):
    return decode(json.loads(text))


def read_json_object(path: str | Path, missing: str | None = None) -> dict:
    """The JSON object in `path`, decoded; ValueError naming the file when it is absent (`missing`, if
    given, is the whole message then), not JSON, or not an object."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(missing or f"{path}: missing") from None
    try:
        data = loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def write_json(path: str | Path, data, indent: int | None = 2, sort_keys: bool = False, default=None) -> None:
    """Write `data` to `path` atomically (see files.atomic_file)."""
    from .files import atomic_file

    with atomic_file(path) as handle:
        handle.write(dumps(data, indent=indent, sort_keys=sort_keys, default=default) + "\n")


__all__ = ["encode", "decode", "dumps", "loads", "read_json_object", "write_json", "FLOAT_TAG"]
