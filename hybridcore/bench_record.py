"""What every benchmark JSON records beside its figures: where and on what it ran, and how the figures
are summarised (the median of repeated measurements, with their spread), so a figure can be rerun and
compared. Shared by `hybridcore bench` and the scripts in benchmarks/."""

from __future__ import annotations

import datetime
import importlib
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def versions() -> dict:
    """Versions of Python, torch and the packages a contender may use (None: not importable)."""
    found = {"python": sys.version.split()[0], "torch": torch.__version__}
    for name in ("triton", "transformers", "mamba_ssm", "causal_conv1d"):
        try:
            found[name] = getattr(importlib.import_module(name), "__version__", "unknown")
        except Exception:  # absent, or a build that does not import here
            found[name] = None
    return found


SOURCE_COMMIT_ENV = "HYBRIDCORE_SOURCE_COMMIT"


def git_state(root: Path = ROOT) -> dict:
    """The commit of the tree that ran, and whether tracked files differ from it (None outside git).
    A machine that receives a copy of the files without their history names the commit they were copied
    from in $HYBRIDCORE_SOURCE_COMMIT; its own git knows nothing of it (git_dirty is then not known)."""
    if os.environ.get(SOURCE_COMMIT_ENV):
        return {"git_commit": os.environ[SOURCE_COMMIT_ENV], "git_dirty": None}

    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"git_commit": git("rev-parse", "HEAD"),
                "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None, "git_dirty": None}


def environment(device: torch.device) -> dict:
    """GPU name (or "cpu"), package versions, git commit and the time, for a result's JSON."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"gpu": gpu, "versions": versions(), **git_state(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def write_report(report: dict, out: Path | None, results: Path, file_name: str, smoke: bool) -> Path | None:
    """Write a benchmark script's JSON to `out`: a file, or a folder to put `file_name` in (default: the
    `results` folder). A smoke run writes only where --out asks. Returns the path written, if any."""
    from .io.json_codec import write_json

    if smoke and out is None:
        return None
    path = out or results
    if path.is_dir():
        path = path / file_name
    write_json(path, report)
    print(f"wrote {path}")
    return path


def median_and_spread(values: list[float]) -> dict:
    """The median of repeated measurements and their range, [min, max]."""
    return {"median": statistics.median(values), "spread": [min(values), max(values)]}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(device: torch.device, n: int = 8192, repeats: int = 10) -> float:
    """Measured TFLOP/s of an n^3 matmul (bf16 on CUDA, fp32 on CPU; random data, median of repeats):
    what this GPU reaches on PyTorch today, printed beside MFU as "% of measured", never instead of it."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    times = []
    for i in range(repeats + 3):  # three untimed first
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        if i >= 3:
            times.append(time.perf_counter() - start)
    del a, b
    return 2 * n ** 3 / statistics.median(times) / 1e12


def kernel_times(step, repeats: int = 20, before_each=None, top: int = 12) -> dict:
    """Mean GPU time per call of `step` spent in each kernel, in ms, largest first (torch.profiler);
    prints the `top` largest."""
    from torch.profiler import ProfilerActivity, profile

    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            if before_each is not None:
                before_each()
            step()
        torch.cuda.synchronize()
    times = {}
    for event in prof.key_averages():
        total = getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0)
        if total > 0:
            times[event.key[:80]] = total / repeats / 1e3  # microseconds -> ms per step
    times = dict(sorted(times.items(), key=lambda kv: -kv[1]))
    print(f"    {sum(times.values()):7.3f} ms  in all kernels")
    for key, ms in list(times.items())[:top]:
        print(f"    {ms:7.3f} ms  {key}")
    return times
