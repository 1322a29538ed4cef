"""Compile start-up: time from process start to the first completed training step with compiled layers,
cold (an empty compile cache) and warm (a second process on the same cache directory), each in its own
process; hybridcore.parallel.compile.compile_layers does the compiling.

    python benchmarks/compile_startup.py                              # falcon-h1-0.5b, 4 x 4096, GPU
    python benchmarks/compile_startup.py --mode default --baseline    # also today's per-layer compile, cold
    python benchmarks/compile_startup.py --smoke                      # CPU, tiny, Inductor on the CPU

A step is forward + chunked loss + backward + fused AdamW under bf16 autocast over fp32 weights (the step
`hybridcore bench` times). Each process reports: seconds from its start to the end of the first step
(imports, model build, compilation, Triton autotuning and the step itself), the second step (CUDA-graph
recording under reduce-overhead), the median of the later steps, and Inductor's cache hits and misses.
`--baseline` adds a cold process that compiles each layer as hybridcore.train.model_setup did before
(layer.compile, automatic dynamic shapes) with its own empty caches. JSON under benchmarks/results/.
"""

import time

PROCESS_START = time.perf_counter()  # before the heavy imports: they count in the start-up

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SMOKE = dict(preset="debug", batch_size=2, seq_len=64, steps=3, device="cpu", mode="default")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="falcon-h1-0.5b")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model config field (repeatable)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--steps", type=int, default=6, help="steps per process (the first two are start-up)")
    p.add_argument("--mode", default="reduce-overhead",
                   choices=["default", "reduce-overhead", "max-autotune-no-cudagraphs"], help="torch.compile mode")
    p.add_argument("--device", default="cuda")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="compile cache to start from (default: a new empty one, removed afterwards)")
    p.add_argument("--baseline", action="store_true", help="also a cold process with the per-layer compile")
    p.add_argument("--process-timeout", type=int, default=420, help="seconds one process may take")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny; prints the JSON, writes nothing")
    p.add_argument("--out", type=Path, default=None, help="JSON file or directory (default: benchmarks/results/)")
    p.add_argument("--child", choices=["new", "baseline"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-json", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    if args.steps < 3:
        raise SystemExit("--steps must be >= 3")
    return args


# ---- one process: build, compile, train a few steps ---------------------------------------------------
def run_child(args) -> dict:
    import torch
    from torch._dynamo.utils import counters

    from hybridcore import ops
    from hybridcore.config import apply_overrides
    from hybridcore.model import build_model
    from hybridcore.presets import get_preset

    imported = time.perf_counter()
    device = torch.device(args.device)
    config = apply_overrides(get_preset(args.preset), args.sets)
    model = build_model(config, device=device, dtype=torch.float32, seed=0).train()
    if args.child == "new":
        from hybridcore.parallel.compile import compile_layers

        compile_layers(model, args.mode, cache_dir=args.cache_dir)
    else:  # the per-layer compile as it was, its caches pointed at the empty directory
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(args.cache_dir / "inductor")
        os.environ["TRITON_CACHE_DIR"] = str(args.cache_dir / "triton")
        for layer in model.layers.values():
            layer.compile(mode=None if args.mode == "default" else args.mode)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    built = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (args.batch_size, args.seq_len + 1), generator=generator).to(device)
    inputs, labels = ids[:, :-1], ids[:, 1:]
    graphs = args.mode == "reduce-overhead" and device.type == "cuda"

    def step():
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            hidden = model.hidden_states(inputs)
            loss = ops.chunked_cross_entropy(hidden, model.lm_head.weight, labels, config.lm_head_multiplier,
                                             chunk_size=8192)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    marks, losses = [time.perf_counter()], []
    for _ in range(args.steps):
        losses.append(step())  # float() waits for the step
        marks.append(time.perf_counter())
    step_s = [b - a for a, b in zip(marks, marks[1:])]
    return {"process": args.child, "to_first_step_s": marks[1] - PROCESS_START, "import_s": imported - PROCESS_START,
            "build_and_wrap_s": built - imported, "first_step_s": step_s[0], "second_step_s": step_s[1],
            "steady_step_s": statistics.median(step_s[2:]), "step_s": step_s, "losses": losses,
            "inductor_cache": {k: v for k, v in counters["inductor"].items() if "cache" in k},
            "unique_graphs": counters["stats"].get("unique_graphs")}


# ---- the driver -------------------------------------------------------------------------------------
def launch(kind: str, cache_dir: Path, argv: list[str], timeout: int) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "child.json"
        command = [sys.executable, str(Path(__file__).resolve()), *argv, "--child", kind, "--cache-dir",
                   str(cache_dir), "--child-json", str(out)]
        started = time.perf_counter()
        try:
            completed = subprocess.run(command, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"process": kind, "status": f"timed out after {timeout} s"}
        if completed.returncode != 0 or not out.exists():
            return {"process": kind, "status": f"failed with exit status {completed.returncode}"}
        result = json.loads(out.read_text())
        result.update(status="ok", process_wall_s=time.perf_counter() - started)
        return result


def _commit() -> str | None:
    from hybridcore.bench_record import git_state

    return git_state()["git_commit"]


def versions() -> dict:
    from hybridcore.bench import versions as found

    return found()


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.child:
        args.child_json.write_text(json.dumps(run_child(args)))
        return {}
    command = "python benchmarks/compile_startup.py " + " ".join(argv)
    argv = [a for a in argv if a != "--baseline"]
    import torch

    report = {"benchmark": "compile_startup", "time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "versions": versions(),
              "git_commit": _commit(),
              "command": command,
              "preset": args.preset, "set": args.sets, "batch_size": args.batch_size, "seq_len": args.seq_len,
              "mode": args.mode, "smoke": args.smoke, "processes": {}}
    with tempfile.TemporaryDirectory(prefix="hybridcore-compile-") as scratch:
        cache = args.cache_dir or Path(scratch) / "cache"
        plan = [("cold", "new", cache), ("warm", "new", cache)]
        if args.baseline:
            plan.append(("baseline_cold", "baseline", Path(scratch) / "baseline-cache"))
        for name, kind, directory in plan:
            print(f"{name}: own process, cache {directory}", flush=True)
            report["processes"][name] = launch(kind, directory, argv, args.process_timeout)
            write(report, args)
    print_summary(report)
    return report


def write(report: dict, args) -> None:
    if args.smoke and args.out is None:
        return
    out = args.out or RESULTS
    if out.suffix != ".json":
        out = out / f"compile_startup_{args.preset}_{args.mode}_{report['time'][:19].replace(':', '')}.json"
    from hybridcore.io.json_codec import write_json

    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, report, indent=1)
    report["written_to"] = str(out)


def print_summary(report: dict) -> None:
    if report["smoke"] and "written_to" not in report:
        print(json.dumps(report, indent=1))
    print(f"compile_startup {report['preset']} {report['batch_size']}x{report['seq_len']} mode {report['mode']} "
          f"on {report['device']}; torch {report['versions'].get('torch')}, triton {report['versions'].get('triton')}")
    for name, r in report["processes"].items():
        if r.get("status") != "ok":
            print(f"  {name:<14} {r.get('status')}")
            continue
        print(f"  {name:<14} first step done at {r['to_first_step_s']:7.1f} s (imports {r['import_s']:.1f}, "
              f"first step {r['first_step_s']:.1f}), second step {r['second_step_s']:.2f} s, "
              f"then {r['steady_step_s']:.3f} s/step; cache {r['inductor_cache']}")
    if "written_to" in report:
        print(f"wrote {report['written_to']}")


if __name__ == "__main__":
    main()
    sys.exit(0)
