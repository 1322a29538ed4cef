"""The one way hybridcore writes outputs: a file or a whole directory appears complete or not at all,
and an existing output is replaced only when that destroys nothing but that output.

Everything is staged under a hidden name beside its target (the same filesystem), flushed, then
renamed into place, which is atomic there. A directory being staged is held under an advisory lock
(flock on the directory itself), so the next run of a command tells a killed writer's leftovers from a
live writer's work, and removes only the former.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path

from .lock import holder_of, try_lock_fd
from .run_dir import LOCK_FILE, enclosing_run, is_run_dir

STAGING = ".staging-"  # .NAME.staging-XXXXXXXX: a directory being written
REPLACED = ".replaced-"  # .NAME.replaced-XXXXXXXX: the previous output, between the two renames
_MAX_CHECKED_ENTRIES = 100_000  # an output holding more than this is not one a command wrote


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


@contextmanager
def atomic_file(path: str | Path, mode: str = "w"):
    """Yield a handle on a temporary file beside `path`; on success it is flushed to disk and renamed
    onto `path`, on any error it is removed and `path` is untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


# ---- whole directories ------------------------------------------------------------------------------
@contextmanager
def atomic_directory(path: str | Path, overwrite: bool = False, inputs=(), own=None):
    """Yield a fresh staging directory to fill; on success it becomes `path`, on any error it is removed.

    An existing non-empty `path` is replaced only with `overwrite`, and never when it is, holds or lies
    inside one of `inputs` or a training run, or holds an entry that `own` does not match (check_output)."""
    target = Path(os.path.abspath(path))
    check_output(target, overwrite, inputs, own)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target)
    staging = target.with_name(f".{target.name}{STAGING}{uuid.uuid4().hex[:8]}")
    staging.mkdir()  # plain mkdir: the output gets the usual umask permissions
    fd = os.open(staging, os.O_RDONLY)
    try_lock_fd(fd)  # held until we are done: a live writer's staging is never cleaned up
    try:
        yield staging
        check_output(target, overwrite, inputs, own)  # again: something may have appeared while we wrote
        publish_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        os.close(fd)


def copy_files(files, directory: str | Path) -> None:
    """Copy each file into `directory` under its own name (a staging directory: published with it)."""
    for file in files:
        shutil.copyfile(file, Path(directory) / Path(file).name)


def publish_directory(staging: str | Path, target: str | Path) -> None:
    """Rename `staging` onto `target`. An existing target is first moved aside, then deleted once the new
    one is in place, so a failure between the two renames loses nothing."""
    staging, target = Path(staging), Path(target)
    if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
        target.rmdir()
    if not os.path.lexists(target):
        os.rename(staging, target)
        fsync_dir(target.parent)
        return
    old = target.with_name(f".{target.name}{REPLACED}{uuid.uuid4().hex[:8]}")
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(old, target)
        raise
    fsync_dir(target.parent)
    remove_tree(old)


def remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_directory(path: str | Path) -> None:
    """Rename away, then delete: a half-deleted directory never appears under its own name."""
    path = Path(path)
    trash = path.with_name(f".deleting-{path.name}-{uuid.uuid4().hex[:8]}")
    path.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def remove_stale_staging(target: str | Path) -> list[Path]:
    """Remove what killed writers of `target` left beside it: staging directories nobody holds, and a
    previous output moved aside (restored when the new one never arrived). Returns what was removed."""
    target = Path(os.path.abspath(target))
    if not target.parent.is_dir():
        return []
    removed = []
    for path in sorted(p for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.")):
        if path.name.startswith(f".{target.name}{STAGING}") and path.is_dir() and _nobody_holds(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        elif path.name.startswith(f".{target.name}{REPLACED}"):
            if os.path.lexists(target):
                remove_tree(path)
                removed.append(path)
            else:  # killed between the two renames: the old output is all there is
                os.rename(path, target)
                _warn(f"restored {target} from {path.name}, left by an interrupted replacement")
    for path in removed:
        _warn(f"removed {path}, left by an interrupted write of {target.name}")
    return removed


def _nobody_holds(directory: Path) -> bool:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return False
    try:
        return try_lock_fd(fd)
    except OSError:  # a filesystem without flock: never guess
        return False
    finally:
        os.close(fd)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


# ---- what may be replaced ---------------------------------------------------------------------------
def check_output(path: str | Path, overwrite: bool, inputs=(), own=None) -> None:
    """ValueError unless writing `path` destroys nothing but an earlier output: an existing non-empty
    `path` needs `overwrite`, and even then it must not be, hold or lie inside one of `inputs` or a
    training run directory (whose checkpoints and metrics no command but train may replace). With `own`
    (the glob patterns of the names the command writes in the directory), it must also hold nothing else:
    a directory with anything more is not an earlier output of the command, and nothing in it is lost."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        return
    if not overwrite:
        kind = "directory" if path.is_dir() else "file"
        raise ValueError(f"output path {path} already exists and is a non-empty {kind}; pass --overwrite "
                         f"(overwrite=True) to replace it")
    target = path.resolve()
    for item in inputs:
        source = Path(item).resolve()
        if source == target:
            relation = "is the input"
        elif target in source.parents:
            relation = "holds the input"
        elif source in target.parents:
            relation = "lies inside the input"
        else:
            continue
        raise ValueError(f"refusing to overwrite {path}: it {relation} {item}, which would be destroyed "
                         f"while it is read; choose another output path")
    run = enclosing_run(target)
    if run is None and target.is_dir():
        run = _run_inside(target)
    if run is not None:
        relation = "is" if run == target else ("lies inside" if run in target.parents else "holds")
        holder = holder_of(run / LOCK_FILE)
        busy = f" (and the run is in progress: {holder.describe()})" if holder else ""
        raise ValueError(f"refusing to overwrite {path}: it {relation} the training run directory {run}{busy}; "
                         f"--overwrite never replaces a run's checkpoints and metrics. Choose another output "
                         f"path, or delete the run yourself if you mean to")
    if own is not None:
        _check_only_own(path, target, own)


def _check_only_own(path: Path, target: Path, own) -> None:
    if not target.is_dir():
        raise ValueError(f"refusing to overwrite {path}: it is a file, and this command writes a directory; "
                         f"choose another output path")
    foreign = sorted(entry.name + ("/" if entry.is_dir() else "") for entry in target.iterdir()
                     if not any(fnmatch.fnmatchcase(entry.name, pattern) for pattern in own) or entry.is_dir())
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ValueError(f"refusing to overwrite {path}: it holds {shown}, which this command does not write, so "
                         f"it is not an earlier output of the command and --overwrite would delete them. Choose "
                         f"another output path, or remove them yourself if you mean to")


def _run_inside(directory: Path) -> Path | None:
    seen = 0
    for root, subdirectories, files in os.walk(directory):
        seen += len(subdirectories) + len(files)
        if seen > _MAX_CHECKED_ENTRIES:
            raise ValueError(f"refusing to overwrite {directory}: it holds more than {_MAX_CHECKED_ENTRIES:,} "
                             f"entries, so it is not an output of this command; choose another output path")
        if is_run_dir(root):
            return Path(root)
    return None


__all__ = ["atomic_file", "atomic_directory", "copy_files", "publish_directory", "remove_directory", "remove_tree",
           "remove_stale_staging", "check_output", "fsync_dir", "STAGING", "REPLACED"]
