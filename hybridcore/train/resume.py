"""Which checkpoint a resumed run starts from; rank 0 decides and every rank gets the same answer.

--resume: the newest intact checkpoint (hybridcore.io.checkpoints.verify_checkpoint). A newer damaged
one (truncated, half-copied) is renamed to step_NNNNNNN.damaged (.damaged-2, ... when that name is taken),
named in a warning, and the run falls back to the newest intact one before it (or to step 0), the metrics
rows after it moved to RUN_DIR/superseded-<time>/ as --resume-from does.
--resume-from STEP|PATH: that checkpoint of this run. What the run did after it (later checkpoints and
metrics rows) is moved to RUN_DIR/superseded-<time>/, never deleted, so the run's own files tell one
history and a later --resume cannot pick up the abandoned one.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..io.checkpoints import (DAMAGED, checkpoint_name, checkpoint_step, is_complete, list_checkpoints,
                              newest_intact, verify_checkpoint)
from ..io.files import atomic_file
from ..io.json_codec import dumps
from ..io.run_dir import CHECKPOINTS, METRICS_FILE
from . import distributed
from .metrics import read_metrics


def resume_checkpoint(run_dir: str | Path, resume_from: str | None = None) -> Path | None:
    """The checkpoint to resume from (None: start at step 0); collective."""
    return distributed.on_rank_zero(lambda: _choose(Path(run_dir), resume_from))


def _choose(run_dir: Path, resume_from: str | None) -> Path | None:
    if resume_from is not None:
        chosen = resolve_resume_from(run_dir, resume_from)
        _supersede_after(run_dir, checkpoint_step(chosen), f"--resume-from {resume_from}")
        return chosen
    chosen, damaged = newest_intact(run_dir)
    for path, problem in damaged:
        aside = _free_name(path.with_name(path.name + DAMAGED))
        path.rename(aside)
        instead = f"resuming from {chosen.name}" if chosen is not None else "starting from step 0"
        _warn(f"checkpoint {path} is damaged: {problem}. Moved it aside to {aside.name}; {instead} instead")
    if damaged:  # the rows of the steps trained again move aside, as --resume-from's do
        _supersede_after(run_dir, checkpoint_step(chosen) if chosen is not None else 0, "--resume")
    return chosen


def _free_name(path: Path) -> Path:
    """path, or path-2, path-3, ... : the first that does not exist."""
    candidate, number = path, 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.name}-{number}")
    return candidate


def checkpoint_names(run_dir: str | Path) -> str:
    found = [path.name for _, path in list_checkpoints(run_dir)]
    return f"checkpoint{'s' if len(found) > 1 else ''} {', '.join(found)}" if found else "no complete checkpoint"


def kept_in_run(run_dir: str | Path) -> str:
    """What a failed run leaves to continue from, for its error message."""
    steps = [int(r["step"]) for r in read_metrics(run_dir) if "loss" in r]
    rows = f"metrics.jsonl holds steps {min(steps)}-{max(steps)}" if steps else "metrics.jsonl holds no step yet"
    return f"Kept in {run_dir}: {checkpoint_names(run_dir)}; {rows}"


def resolve_resume_from(run_dir: str | Path, spec: str) -> Path:
    """The intact checkpoint of this run that --resume-from names (a step, a checkpoint's name such as
    step_0000040, or its directory)."""
    run_dir = Path(run_dir)
    text = str(spec).strip()
    if text.isdigit():
        path = run_dir / CHECKPOINTS / checkpoint_name(int(text))
    elif text == Path(text).name and checkpoint_step(text) is not None and not Path(text).exists():
        path = run_dir / CHECKPOINTS / text  # a name as the run's messages print it
    else:
        path = Path(text)
    existing = f"{run_dir / CHECKPOINTS} holds {checkpoint_names(run_dir)}"
    if not is_complete(path):
        raise ValueError(f"--resume-from {spec}: {path} is not a complete checkpoint; {existing}")
    if path.resolve().parent != (run_dir / CHECKPOINTS).resolve():
        raise ValueError(f"--resume-from {spec}: {path} is not a checkpoint of the run in {run_dir} ({existing}); "
                         f"to start a new run from its weights, give --init-hf {path} and a new --out")
    problem = verify_checkpoint(path)
    if problem is not None:
        raise ValueError(f"--resume-from {spec}: {path.name} is damaged ({problem}); {existing}")
    return path


def _supersede_after(run_dir: Path, step: int, flag: str) -> None:
    later = [path for found, path in list_checkpoints(run_dir) if found > step]
    rows = [record for record in read_metrics(run_dir) if int(record.get("step", 0)) > step]
    if not later and not rows:
        return
    folder = _free_name(run_dir / time.strftime("superseded-%Y%m%d-%H%M%S"))
    folder.mkdir()
    if later:
        (folder / CHECKPOINTS).mkdir()
    for path in later:
        path.rename(folder / CHECKPOINTS / path.name)
    if rows:
        with atomic_file(folder / METRICS_FILE) as handle:
            handle.writelines(dumps(record) + "\n" for record in rows)
    steps = sorted({int(record["step"]) for record in rows})
    what = [f"checkpoints {', '.join(path.name for path in later)}"] if later else []
    what += [f"metrics rows of steps {steps[0]}-{steps[-1]}"] if rows else []
    _warn(f"{flag}: moved what the run did after step {step} ({' and '.join(what)}) to {folder}; "
          f"delete it once you no longer need it")


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


__all__ = ["resume_checkpoint", "resolve_resume_from", "checkpoint_names", "kept_in_run"]
