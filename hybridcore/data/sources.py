"""Where documents come from: text files, directories, JSONL/JSON, Parquet, and the built-in default corpus.

A document is one string. Plain text files are one document each; JSONL lines and Parquet rows are one
document each, taken from a configurable field/column. Empty documents are skipped (an EOS alone
teaches nothing).
"""

from __future__ import annotations

import json
import os
import sys
import sysconfig
from pathlib import Path
from typing import Iterable, Iterator

TEXT_SUFFIXES = (".txt", ".md", ".py")
DIRECTORY_SUFFIXES = TEXT_SUFFIXES + (".jsonl", ".json", ".parquet")
SKIPPED_DIRECTORIES = {"__pycache__", "node_modules"}  # plus every hidden directory (.git, .venv, ...)
DEFAULT_CORPUS_BYTES = 8_000_000
# Parts of the stdlib tree that are not the library itself (tests hold odd encodings and huge data).
_STDLIB_EXCLUDED = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """The files behind `inputs`, directories expanded recursively in sorted order."""
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise ValueError("inputs: the list of input paths is empty")
    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found = [p for p in _walk(path) if p.suffix.lower() in DIRECTORY_SUFFIXES]
            if not found:
                raise ValueError(f"{path}: directory holds no files ending in {', '.join(DIRECTORY_SUFFIXES)}")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"{path}: no such file or directory")
    return files


def _walk(directory: Path) -> Iterator[Path]:
    """Files under `directory`, depth first with sorted entries: the order of their sorted path parts."""
    for entry in sorted(directory.iterdir()):
        if entry.is_dir():
            if not entry.name.startswith(".") and entry.name not in SKIPPED_DIRECTORIES:
                yield from _walk(entry)
        elif entry.is_file():
            yield entry


def iter_documents(inputs: Iterable[str | Path], text_field: str = "text") -> Iterator[str]:
    """Every non-empty document in `inputs` (files or directories), in a deterministic order."""
    for path in expand_inputs(inputs):
        yield from iter_file(path, text_field)


def iter_file(path: Path, text_field: str = "text") -> Iterator[str]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        documents = iter_jsonl(path, text_field)
    elif suffix == ".json":
        documents = iter_json(path, text_field)
    elif suffix == ".parquet":
        documents = iter_parquet(path, text_field)
    else:  # an explicitly named file of any other kind is read as text
        documents = iter([read_text_file(path)])
    return (doc for doc in documents if doc)


def read_text_file(path: Path) -> str:
    """The file as UTF-8 text; ValueError when it is binary (an executable, an image, an archive), which
    would otherwise become a document of noise. A few undecodable bytes in real text are replaced."""
    data = path.read_bytes()
    if b"\0" in data:
        raise ValueError(f"{path}: holds NUL bytes, so it is binary (an executable, an image, an archive?), not "
                         f"text; prepare reads text, JSONL, JSON and Parquet files")
    text = data.decode("utf-8", errors="replace")
    undecodable = text.count("\ufffd")
    if undecodable > max(16, len(text) // 100):
        raise ValueError(f"{path}: {undecodable} of its {len(text)} characters are not UTF-8, so it is binary or in "
                         f"another encoding; convert it to UTF-8 text first (e.g. iconv -t utf-8)")
    return text


def _field(record, path: Path, where: str, text_field: str) -> str:
    if isinstance(record, str):
        return record
    if not isinstance(record, dict) or text_field not in record:
        raise ValueError(f"{path}:{where}: no field {text_field!r} (set it with --text-field)")
    value = record[text_field]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{path}:{where}: field {text_field!r} is {type(value).__name__}, not a string")
    return value


def iter_jsonl(path: Path, text_field: str = "text") -> Iterator[str]:
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from error
            yield _field(record, path, str(number), text_field)


def iter_json(path: Path, text_field: str = "text") -> Iterator[str]:
    """A JSON array of records (or strings), one record, or, as many datasets name them, JSON Lines."""
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        yield from iter_jsonl(path, text_field)
        return
    records = data if isinstance(data, list) else [data]
    for index, record in enumerate(records):
        yield _field(record, path, f"record {index}", text_field)


def iter_parquet(path: Path, column: str = "text", batch_rows: int = 1024) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError as error:
        raise ValueError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from error
    parquet = pq.ParquetFile(path)
    names = parquet.schema_arrow.names
    if column not in names:
        raise ValueError(f"{path}: no column {column!r} (columns: {names}; set it with --text-field)")
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=[column]):
        for value in batch.column(0).to_pylist():
            yield value or ""


def stdlib_directory() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def default_corpus_files(max_bytes: int | None = DEFAULT_CORPUS_BYTES) -> list[Path]:
    """The running interpreter's own standard-library `.py` files, sorted, capped at `max_bytes` in total.

    Always present and version-pinned by the interpreter, so a first run needs no download."""
    root = stdlib_directory()
    files = []
    for directory, subdirectories, names in os.walk(root):
        # prune in place: never descend into site-packages (it can be far larger than the stdlib)
        subdirectories[:] = [d for d in subdirectories if d not in _STDLIB_EXCLUDED and not d.startswith(".")]
        files.extend(Path(directory) / name for name in names if name.endswith(".py"))
    files.sort(key=lambda p: p.relative_to(root).parts)
    chosen, total = [], 0
    for path in files:
        size = path.stat().st_size
        if max_bytes is not None and total + size > max_bytes:
            if chosen:
                break
            continue  # the very first file alone is too big: try smaller ones so the corpus is never empty
        chosen.append(path)
        total += size
    if not chosen:
        raise ValueError(f"default corpus: no .py files under {root} within {max_bytes} bytes")
    return chosen


def default_corpus(max_bytes: int | None = DEFAULT_CORPUS_BYTES) -> Iterator[str]:
    """Documents of the default corpus (one per stdlib source file)."""
    for path in default_corpus_files(max_bytes):
        yield from iter_file(path)


def default_corpus_description(files: list[Path]) -> str:
    version = ".".join(map(str, sys.version_info[:3]))
    return f"default corpus: Python {version} standard library, {len(files)} .py files under {stdlib_directory()}"
