"""RUN_DIR/metrics.jsonl (one JSON object per line, flushed), optional TensorBoard, memory readings.

Train lines: step, loss, lr, weight_decay, grad_norm, tokens (cumulative), tokens_per_s, step_time_s,
memory_gib (peak allocated on CUDA, resident set on CPU), mfu (CUDA only), skipped (only when true).
Eval lines: step, val_loss, val_ppl, val_tokens. Only rank 0 writes.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from ..io import json_codec
from ..io.files import atomic_file
from ..io.run_dir import METRICS_FILE


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Every complete line of a run's metrics.jsonl (a line cut short by a crash is ignored)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    with open(path) as handle:
        for line in handle:
            try:
                record = json_codec.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def truncate_metrics(run_dir: str | Path, last_step: int) -> None:
    """Keep only lines up to `last_step` (the checkpoint a run resumes from): the resumed run writes
    the later lines again, so the file ends up as the uninterrupted run's would be."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return
    kept = [r for r in read_metrics(run_dir) if int(r.get("step", 0)) <= last_step]
    with atomic_file(path) as handle:
        for record in kept:
            handle.write(json_codec.dumps(record) + "\n")


def first_skipped_step(records: list[dict]) -> int | None:
    """The first step whose update was skipped for a non-finite loss or gradient, if any."""
    return min((int(r["step"]) for r in records if r.get("skipped")), default=None)


def memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    try:
        with open("/proc/self/statm") as handle:
            resident_pages = int(handle.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 30
    except (OSError, ValueError, IndexError):
        import resource  # peak rather than current, where /proc is not available

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


class MetricsLogger:
    """Appends records to metrics.jsonl and mirrors the numbers to TensorBoard; a no-op off rank 0."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = False, start_step: int = 0):
        self.enabled = enabled
        self.handle = None
        self.writer = None
        if not enabled:
            return
        self.handle = open(Path(run_dir) / METRICS_FILE, "a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a crashed run wrote after the checkpoint we resume from
            self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=start_step + 1)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self.handle.write(json_codec.dumps(record) + "\n")
        self.handle.flush()
        if self.writer is not None:
            step = record["step"]
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool) \
                        and math.isfinite(value):
                    self.writer.add_scalar(_tensorboard_tag(key), value, step)

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _tensorboard_tag(key: str) -> str:
    if key.startswith("val_"):
        return f"val/{key[4:]}"
    return f"train/{key}"


def check_tensorboard_available() -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise ValueError("--tensorboard needs the tensorboard package (pip install tensorboard)") from None


__all__ = ["MetricsLogger", "read_metrics", "truncate_metrics", "first_skipped_step", "memory_gib", "METRICS_FILE",
           "check_tensorboard_available"]
