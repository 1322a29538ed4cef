"""`hybridcore train` itself, timed: tokens/s on packed documents (the embedded corpus) and the time to the
first completed step, in a cold process (an empty compile cache) and a warm one (the same cache again).

    python benchmarks/train_bench.py                       # falcon-h1-0.5b, 4 x 4096, train's defaults, GPU
    python benchmarks/train_bench.py --smoke               # CPU, tiny, eager: what the tests run

The corpus is prepared once before anything is timed, without a validation split (so no evaluation runs
at the end). Each run is its own `python -m hybridcore train` process; its metrics.jsonl gives the
tokens/s of every step (the median after the first --warmup steps is reported, with the range) and MFU
against the datasheet peak (TrainConfig.peak_flops). "to_first_step_s" is from the process's launch to
the moment its first metrics row exists: imports, model build, compilation, Triton autotuning and the
step. JSON with the versions and the git commit under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="falcon-h1-0.5b")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5, help="steps left out of the throughput median")
    p.add_argument("--compile-mode", default="auto",
                   choices=["auto", "none", "default", "reduce-overhead", "max-autotune-no-cudagraphs"],
                   help="auto: no compile flag, what `hybridcore train` chooses by default (on CUDA each layer "
                   "compiled with CUDA graphs); none: --no-compile")
    p.add_argument("--runs", nargs="+", default=["cold", "warm"], choices=["cold", "warm"],
                   help="cold: an empty compile cache; warm: the cache the runs before it filled")
    p.add_argument("--timeout", type=int, default=300, help="seconds one run may take")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="a compile cache to start from (a run of `hybridcore bench` at the same shapes fills "
                   "one): every run is then warm; default: an empty cache for the first run")
    p.add_argument("--smoke", action="store_true", help="CPU, debug preset, tiny, eager")
    p.add_argument("--out", type=Path, default=None, help="JSON file or folder (default benchmarks/results)")
    args = p.parse_args(argv)
    if args.cache_dir is not None and "cold" in args.runs:
        p.error("--cache-dir starts from a filled compile cache: give --runs warm")
    if args.smoke:
        args.preset, args.batch_size, args.seq_len, args.steps, args.warmup = "debug", 2, 64, 4, 1
        args.compile_mode = "none"
    return args


def train_command(args, data: Path, run_dir: Path, cache: Path) -> list[str]:
    command = [sys.executable, "-m", "hybridcore", "train", "--preset", args.preset, "--data", str(data),
               "--out", str(run_dir), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--seq-len", str(args.seq_len), "--save-every", "0", "--eval-every", "0", "--sample-tokens", "0",
               "--no-progress", "--warmup", "0"]
    if args.smoke:
        command += ["--device", "cpu"]
    if args.compile_mode == "none":
        command += ["--no-compile"]
    else:
        command += ["--compile-cache-dir", str(cache)]
        if args.compile_mode != "auto":
            command += ["--compile", "--compile-mode", args.compile_mode]
    return command


def timed_run(command: list[str], run_dir: Path, timeout: int) -> dict:
    metrics = run_dir / "metrics.jsonl"
    started = time.perf_counter()
    process = subprocess.Popen(command)
    first_step = None
    while process.poll() is None and time.perf_counter() - started < timeout:
        if first_step is None and metrics.exists() and metrics.stat().st_size > 0:
            first_step = time.perf_counter() - started
        time.sleep(0.05)
    if process.poll() is None:
        process.kill()
        return {"status": f"timed out after {timeout} s", "to_first_step_s": first_step}
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    steps = [row for row in rows if "tokens_per_s" in row]
    result = {"status": "ok" if process.returncode == 0 else f"exit status {process.returncode}",
              "wall_s": time.perf_counter() - started, "to_first_step_s": first_step, "steps": len(steps)}
    if steps:
        result.update(first_step_s=steps[0]["step_time_s"], step_time_s=[round(r["step_time_s"], 4) for r in steps],
                      losses=[r["loss"] for r in steps], memory_gib=max(r.get("memory_gib") or 0 for r in steps))
    return result


def summarize(result: dict, warmup: int) -> None:
    steady = [t for t in result.get("step_time_s", [])[warmup:]]
    if not steady:
        return
    tokens = result["tokens_per_step"]
    per_step = sorted(tokens / t for t in steady)
    result.update(tokens_per_s=statistics.median(per_step), tokens_per_s_range=[per_step[0], per_step[-1]])
    if result.get("flops_per_token") and result.get("peak_flops"):
        result["mfu"] = result["tokens_per_s"] * result["flops_per_token"] / result["peak_flops"]


def main(argv=None) -> dict:
    args = parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from hybridcore.bench import versions
    from hybridcore.flops import flops_per_token
    from hybridcore.presets import get_preset
    from hybridcore.train.config import TrainConfig

    report = {"benchmark": "train", "command": "python benchmarks/train_bench.py " + " ".join(argv or sys.argv[1:]),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "gpu": _gpu(), "versions": versions(), "commit": _commit(), "preset": args.preset,
              "batch_size": args.batch_size, "seq_len": args.seq_len, "compile_mode": args.compile_mode,
              "documents": "packed (embedded corpus)", "runs": {}}
    flops = flops_per_token(get_preset(args.preset), args.seq_len).total
    with tempfile.TemporaryDirectory(prefix="hybridcore-train-bench-") as scratch:
        scratch = Path(scratch)
        data = scratch / "data"
        subprocess.run([sys.executable, "-m", "hybridcore", "prepare", "--out", str(data), "--val-fraction", "0",
                        "--quiet"], check=True)
        for index, name in enumerate(args.runs):
            cache = scratch / "cache" if name == "warm" else scratch / f"cache-{index}"
            if name == "cold" and "warm" in args.runs[index + 1:]:
                cache = scratch / "cache"  # the warm run after it reuses what it fills
            if args.cache_dir is not None:
                cache = args.cache_dir
            run_dir = scratch / f"run-{index}-{name}"
            print(f"== {name}: {' '.join(train_command(args, data, run_dir, cache)[1:])}", flush=True)
            result = timed_run(train_command(args, data, run_dir, cache), run_dir, args.timeout)
            result.update(tokens_per_step=args.batch_size * args.seq_len, flops_per_token=flops,
                          peak_flops=TrainConfig().peak_flops)
            summarize(result, args.warmup)
            report["runs"][name] = result
            _write(report, args)
    for name, r in report["runs"].items():
        print(f"  {name:5s} {r['status']}: first step done {r.get('to_first_step_s') or 0:.1f} s after launch "
              f"(the step itself {r.get('first_step_s') or 0:.1f} s); {r.get('tokens_per_s') or 0:,.0f} tok/s "
              f"median, MFU {100 * (r.get('mfu') or 0):.1f}%")
    return report


def _gpu() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def _commit() -> str | None:
    from hybridcore.bench_record import git_state

    return git_state()["git_commit"]


def _write(report: dict, args) -> None:
    from hybridcore.io.json_codec import write_json

    out = args.out or RESULTS
    if out.suffix != ".json":
        out = out / f"train-{args.preset}-{args.batch_size}x{args.seq_len}-{args.compile_mode}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, report, indent=1)


if __name__ == "__main__":
    main()
