"""FP8 training: tokens/s of float8 matmuls (torchao, through hybridcore.parallel.float8) against bf16, and
the loss curve of an FP8 run against a bf16 one, each contender in its own process.

    python benchmarks/fp8_bench.py --part throughput    # 8 falcon-h1-7b blocks, 2 x 4096: bf16 / tensorwise / rowwise
    python benchmarks/fp8_bench.py --part loss           # falcon-h1-0.5b, 300 train steps: bf16 / tensorwise
    python benchmarks/fp8_bench.py --smoke               # CPU, tiny, float8 emulated; prints the JSON, writes nothing

throughput: the trainer's step, as `hybridcore bench` times it (`parallelize`, then `train_step`: forward +
chunked loss + backward + clipping + fused AdamW, bf16 autocast over fp32 master weights), layers compiled
(--compile-mode), one process per recipe (and per --min-sizes value), all sharing one compile cache so that
hybridcore's own Triton kernels are tuned once. Median tokens/s of --steps steps after --warmup steps, peak
memory.
loss: `hybridcore train` itself on the embedded corpus (prepared once, byte tokenizer), the same seed and
batches for both runs, layers compiled; the FP8 run converts every eligible linear (--loss-min-size, default
16: all but the LM head and unaligned ones) before the trainer's parallelize step. Reported: the mean loss of
the last 10 steps of each run and their relative difference.
JSON under benchmarks/results/; a summary is printed last.
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
SEVEN_B_BLOCKS = "layout=" + "P-" * 8
SMOKE = dict(preset="debug", sets=["layout=P-P-", "d_model=64", "d_ff=128", "mamba_d_head=16", "mamba_n_heads=4",
                                   "head_dim=16", "num_heads=4", "num_kv_heads=2", "mamba_d_state=16",
                                   "mamba_chunk_size=16"],
             batch_size=2, seq_len=64, steps=2, warmup=1, device="cpu", compile_mode="default", min_sizes=[16],
             loss_preset="debug", loss_sets=[], loss_steps=4, loss_batch_size=2, loss_seq_len=64, loss_min_size=16)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["throughput", "loss", "all"], default="all")
    p.add_argument("--preset", default="falcon-h1-7b", help="throughput: model shape")
    p.add_argument("--set", dest="sets", action="append", default=None, metavar="KEY=VALUE",
                   help=f"throughput: override a model field (default: {SEVEN_B_BLOCKS})")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--steps", type=int, default=6, help="throughput: timed steps (median)")
    p.add_argument("--warmup", type=int, default=3, help="throughput: untimed steps first (compile, autotune)")
    p.add_argument("--recipes", nargs="+", default=["tensorwise", "rowwise"],
                   choices=["tensorwise", "rowwise", "rowwise_with_gw_hp"], help="throughput: FP8 recipes")
    p.add_argument("--min-sizes", type=int, nargs="+", default=[2048],
                   help="throughput: --fp8-min-size values to measure (one process per recipe and value)")
    p.add_argument("--also-without", nargs="+", default=[], metavar="NAME",
                   help="throughput: also measure each recipe and size with these linears (their own names, as "
                        "in_proj) kept in bf16, to see what converting them gives")
    p.add_argument("--compile-mode", default="reduce-overhead",
                   choices=["default", "reduce-overhead", "max-autotune-no-cudagraphs"])
    p.add_argument("--loss-preset", default="falcon-h1-0.5b")
    p.add_argument("--loss-set", dest="loss_sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--loss-steps", type=int, default=300)
    p.add_argument("--loss-batch-size", type=int, default=4)
    p.add_argument("--loss-seq-len", type=int, default=4096)
    p.add_argument("--loss-recipe", default="tensorwise", choices=["tensorwise", "rowwise", "rowwise_with_gw_hp"])
    p.add_argument("--loss-min-size", type=int, default=16, help="loss: --fp8-min-size of the FP8 run")
    p.add_argument("--device", default="cuda")
    p.add_argument("--process-timeout", type=int, default=540, help="seconds one contender's process may take")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny, float8 emulated; prints, writes nothing")
    p.add_argument("--out", type=Path, default=None, help="JSON file or directory (default: benchmarks/results/)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # "throughput:RECIPE:MIN:KEPT" or "loss:RECIPE"
    p.add_argument("--child-json", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--work-dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    if args.sets is None:
        args.sets = [SEVEN_B_BLOCKS]
    return args


# ---- contenders (each in its own process) -----------------------------------------------------------
def _emulate_float8() -> None:
    """CPUs have no float8 matmul: the smoke run emulates it through torchao's own switch (this process)."""
    import dataclasses

    from hybridcore.parallel import float8

    original = float8.float8_config
    float8.float8_config = lambda *a, **k: dataclasses.replace(original(*a, **k), emulate=True)


def _recording_conversions() -> list[str]:
    """The names of the linears converted from now on in this process (the trainer converts them)."""
    from hybridcore.parallel import float8

    converted, original = [], float8.convert_to_float8

    def recording(*args, **kwargs):
        names = original(*args, **kwargs)
        converted.extend(names)
        return names

    float8.convert_to_float8 = recording
    return converted


def convert(model, recipe: str, min_size: int, emulate: bool, kept: tuple[str, ...] = ()) -> list[str]:
    from hybridcore.parallel.float8 import SKIPPED_MODULES, convert_to_float8

    if emulate:
        _emulate_float8()
    return convert_to_float8(model, recipe, min_size, skipped=SKIPPED_MODULES + kept)


def throughput_child(args, recipe: str, min_size: int, kept: tuple[str, ...] = ()) -> dict:
    import torch

    from hybridcore.bench_record import synchronize
    from hybridcore.config import apply_overrides
    from hybridcore.model import build_model
    from hybridcore.parallel import parallelize
    from hybridcore.presets import get_preset
    from hybridcore.train.step import Batch, build_optimizers, train_step

    device = torch.device(args.device)
    config = apply_overrides(get_preset(args.preset), args.sets)
    model = build_model(config, device=device, dtype=torch.float32, seed=0)
    # Converted here, as parallelize would, so that --also-without can keep named linears in bf16.
    converted = convert(model, recipe, min_size, device.type != "cuda", kept) if recipe != "bf16" else []
    # The smoke run checks the plumbing only: Inductor's C++ build on a CPU takes minutes.
    compiled = not args.smoke
    model = parallelize(model, compile=compiled, compile_mode=args.compile_mode,
                        compile_cache_dir=args.work_dir / "compile-cache").train()
    optimizers = build_optimizers(model, lr=1e-4, weight_decay=0.1)
    generator = torch.Generator().manual_seed(0)
    batch = Batch.from_tokens(torch.randint(0, config.vocab_size, (args.batch_size, args.seq_len + 1),
                                            generator=generator).to(device))
    graphs = compiled and args.compile_mode == "reduce-overhead" and device.type == "cuda"

    def step():  # the trainer's step, as `hybridcore bench` times it
        return train_step(model, optimizers, [batch], max_norm=1.0, autocast_dtype=torch.bfloat16,
                          cuda_graphs=graphs).loss

    for _ in range(args.warmup):
        step()
    synchronize(device)  # else the first timed step also waits for the last untimed one, queued behind it
    times, losses = [], []
    for _ in range(args.steps):
        start = time.perf_counter()
        losses.append(float(step()))  # float() waits for the step
        times.append(time.perf_counter() - start)
    tokens = args.batch_size * args.seq_len
    return {"recipe": recipe, "min_size": min_size if recipe != "bf16" else None, "kept_in_bf16": list(kept),
            "converted": converted, "step": "train_step",
            "tok_s": tokens / statistics.median(times), "step_ms": [round(1e3 * t, 2) for t in times],
            "losses": losses,
            "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else None}


def loss_child(args, recipe: str) -> dict:
    import torch

    from hybridcore.train import trainer
    from hybridcore.train.config import TrainConfig
    from hybridcore.train.metrics import read_metrics

    float8 = dict(fp8=recipe, fp8_min_size=args.loss_min_size) if recipe != "bf16" else {}
    if float8 and torch.device(args.device).type != "cuda":
        _emulate_float8()
    converted = _recording_conversions()
    run_dir = args.work_dir / f"run-{recipe}"
    config = TrainConfig(out=str(run_dir), preset=args.loss_preset, overrides=list(args.loss_sets),
                         data=str(args.work_dir / "data"), steps=args.loss_steps, batch_size=args.loss_batch_size,
                         seq_len=args.loss_seq_len, device=args.device, compile=not args.smoke, save_every=0,
                         eval_every=0, eval_batches=2, sample_tokens=0, progress=False, **float8)
    started = time.perf_counter()
    trainer.train(config)
    losses = [row["loss"] for row in read_metrics(run_dir) if "loss" in row and "step" in row]
    return {"recipe": recipe, "converted": converted, "losses": losses, "wall_s": time.perf_counter() - started,
            "final_loss": statistics.fmean(losses[-10:])}


# ---- the driver -------------------------------------------------------------------------------------
def launch(child: str, argv: list[str], work_dir: Path, timeout: int) -> dict:
    out = work_dir / f"{child.replace(':', '-')}.json"
    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--child", child, "--child-json", str(out),
               "--work-dir", str(work_dir)]
    try:
        completed = subprocess.run(command, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timed out after {timeout} s"}
    if completed.returncode != 0 or not out.exists():
        return {"status": f"failed with exit status {completed.returncode}"}
    return {"status": "ok", **json.loads(out.read_text())}


def run_throughput(args, argv, work_dir, report):
    runs = report.setdefault("throughput", {"preset": args.preset, "set": args.sets, "batch_size": args.batch_size,
                                            "seq_len": args.seq_len, "compile_mode": args.compile_mode, "runs": {}})
    without = ",".join(args.also_without)
    plan = [("bf16", "bf16", 0, "")] + [
        (f"{recipe}@{size}{suffix}", recipe, size, kept) for recipe in args.recipes for size in args.min_sizes
        for suffix, kept in [("", "")] + ([(f" without {without}", without)] if without else [])]
    for name, recipe, size, kept in plan:
        print(f"throughput {name}: own process", flush=True)
        runs["runs"][name] = launch(f"throughput:{recipe}:{size}:{kept}", argv, work_dir, args.process_timeout)
        base = runs["runs"].get("bf16", {}).get("tok_s")
        for result in runs["runs"].values():
            if base and result.get("tok_s"):
                result["vs_bf16"] = result["tok_s"] / base
        write(report, args)


def run_loss(args, argv, work_dir, report):
    from hybridcore.data import prepare

    # no validation split: the comparison is of training losses, and an evaluation at the end would compile
    # the layers' no-grad forward (the bf16 run once ran out of --process-timeout there)
    prepare(None, work_dir / "data", tokenizer="byte", val_fraction=0, progress=False)
    part = report.setdefault("loss", {"preset": args.loss_preset, "set": args.loss_sets, "steps": args.loss_steps,
                                      "batch_size": args.loss_batch_size, "seq_len": args.loss_seq_len,
                                      "fp8_min_size": args.loss_min_size, "runs": {}})
    for recipe in ("bf16", args.loss_recipe):
        print(f"loss {recipe}: own process", flush=True)
        part["runs"][recipe] = launch(f"loss:{recipe}", argv, work_dir, args.process_timeout)
        write(report, args)
    bf16, fp8 = part["runs"]["bf16"], part["runs"][args.loss_recipe]
    if bf16.get("final_loss") and fp8.get("final_loss"):
        part["final_loss_relative_difference"] = (fp8["final_loss"] - bf16["final_loss"]) / bf16["final_loss"]
    write(report, args)


def _commit() -> str | None:
    from hybridcore.bench_record import git_state

    return git_state()["git_commit"]


def versions() -> dict:
    from hybridcore.bench import versions as found

    result = found()
    try:
        import torchao

        result["torchao"] = torchao.__version__
    except ImportError:
        result["torchao"] = None
    return result


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.child:
        kind, recipe, *rest = args.child.split(":")
        if kind == "throughput":
            result = throughput_child(args, recipe, int(rest[0]), tuple(filter(None, rest[1].split(","))))
        else:
            result = loss_child(args, recipe)
        args.child_json.write_text(json.dumps(result))
        return result
    import torch

    report = {"benchmark": "fp8", "time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "versions": versions(),
              "git_commit": _commit(), "command": "python benchmarks/fp8_bench.py " + " ".join(argv),
              "smoke": args.smoke}
    with tempfile.TemporaryDirectory(prefix="hybridcore-fp8-") as scratch:
        if args.part in ("throughput", "all"):
            run_throughput(args, argv, Path(scratch), report)
        if args.part in ("loss", "all"):
            run_loss(args, argv, Path(scratch), report)
    print_summary(report)
    return report


def write(report: dict, args) -> None:
    if args.smoke and args.out is None:
        return
    out = args.out or RESULTS
    if out.suffix != ".json":
        out = out / f"fp8_{args.part}_{report['time'][:19].replace(':', '')}.json"
    from hybridcore.io.json_codec import write_json

    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, report, indent=1)
    report["written_to"] = str(out)


def print_summary(report: dict) -> None:
    if report["smoke"] and "written_to" not in report:
        print(json.dumps(report, indent=1))
    v = report["versions"]
    print(f"fp8_bench on {report['device']}; torch {v.get('torch')}, torchao {v.get('torchao')}, "
          f"triton {v.get('triton')}")
    for name, r in report.get("throughput", {}).get("runs", {}).items():
        line = f"{r['tok_s']:10,.0f} tok/s" if r.get("tok_s") else r.get("status")
        ratio = f"  x{r['vs_bf16']:.3f} of bf16" if "vs_bf16" in r else ""
        print(f"  throughput {name:<18} {line}{ratio}  ({len(r.get('converted', []))} linears in float8)")
    loss = report.get("loss", {})
    for name, r in loss.get("runs", {}).items():
        print(f"  loss {name:<12} " + (f"final {r['final_loss']:.4f} (mean of the last 10 of {len(r['losses'])} steps)"
                                       if r.get("final_loss") else r.get("status")))
    if "final_loss_relative_difference" in loss:
        print(f"  loss: fp8 vs bf16 at the end {100 * loss['final_loss_relative_difference']:+.2f}%")
    if "written_to" in report:
        print(f"wrote {report['written_to']}")


if __name__ == "__main__":
    main()
    sys.exit(0)
