"""Generation speed: prefill and decode tokens/s of `hybridcore.generate` against transformers'
FalconH1ForCausalLM.generate on the same model (a preset's shape, random weights from one seed, the very
same values in both), at several batch sizes, each contender in its own process.

    python benchmarks/generate_bench.py                      # falcon-h1-0.5b, 4K prompt, batch 1 8 64, GPU
    python benchmarks/generate_bench.py --contexts 4096 32768 --batches 1 --new-tokens 128
    python benchmarks/generate_bench.py --smoke              # CPU, tiny; prints the JSON, writes nothing

Contenders (one `python` process each, launched one after the other by this script):
  hybridcore          `hybridcore.generate` as a user calls it: on CUDA the decode step replays a CUDA graph
  hybridcore_eager    the same with capture_cuda_graph=False (`--no-cuda-graph`); CUDA only (on the CPU the
                      default is already eager)
  transformers        FalconH1ForCausalLM.generate (with mamba_ssm's kernels when they import: see
                      `peer_packages` in the JSON)
Each call is greedy with no early stop and is timed from its start to its first new token (the prompt
pass, reported as prefill tokens/s) and from the first to the last new token (decode tokens/s: every row's
tokens; for hybridcore this includes recording the CUDA graph). `steady_decode_tokens_per_s` leaves out
the first two decode steps (graph capture, warm-up). Medians over --repeats calls after one warm-up call.
`agree_tokens`: how many leading new tokens of batch row 0 the two sides chose alike (bf16 random weights
make near-ties, so a sanity figure, not a test). A side that runs out of memory records "oom".
Results: one JSON under benchmarks/results/ (only a real GPU run belongs there); a summary is printed last.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import logging
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
SMOKE = dict(preset="debug", contexts=[48], batches=[1, 2], new_tokens=6, repeats=1, dtype="fp32", device="cpu",
             sets=["layout=P-P-", "d_model=64", "d_ff=96", "mamba_n_heads=4", "mamba_d_head=16",
                   "mamba_d_state=8", "mamba_chunk_size=16", "head_dim=16", "num_heads=4", "num_kv_heads=2"])
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
SIDES = ("hybridcore", "hybridcore_eager", "transformers")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="falcon-h1-0.5b", help="model shape (random weights)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model config field (repeatable)")
    p.add_argument("--contexts", type=int, nargs="+", default=[4096], help="prompt lengths")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64], help="batch sizes (prompts per call)")
    p.add_argument("--new-tokens", type=int, default=64, help="new tokens per call (decode steps + 1)")
    p.add_argument("--repeats", type=int, default=2, help="timed calls per measurement (median)")
    p.add_argument("--dtype", choices=list(DTYPES), default="bf16", help="weights and compute dtype")
    p.add_argument("--device", default="cuda")
    p.add_argument("--sides", nargs="+", choices=SIDES, default=None,
                   help="contenders to run (default: all that apply to the device)")
    p.add_argument("--no-peer", action="store_true", help="skip transformers")
    p.add_argument("--side-timeout", type=int, default=420, help="seconds one contender's process may take")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny model and prompts; prints, writes nothing")
    p.add_argument("--out", type=Path, default=None, help="JSON file or directory (default: benchmarks/results/)")
    p.add_argument("--side", choices=SIDES, default=None, help=argparse.SUPPRESS)  # a contender's own process
    p.add_argument("--side-json", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    for name in ("new_tokens", "repeats"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    if args.new_tokens < 4:
        raise SystemExit("--new-tokens must be >= 4 (the steady figure leaves out the first decode steps)")
    return args


# ---- one contender, in its own process --------------------------------------------------------------
def model_config(args):
    from hybridcore.config import apply_overrides
    from hybridcore.presets import get_preset

    config = apply_overrides(get_preset(args.preset), args.sets)
    return config.replace(max_seq_len=max(max(args.contexts) + args.new_tokens, config.max_seq_len))


def build_ours(config, device, dtype):
    from hybridcore.model import build_model

    return build_model(config, device=device, dtype=dtype, seed=0).eval()


def build_peer(config, device, dtype):
    """transformers' Falcon-H1 holding exactly the weights build_ours makes (the bridge's key map)."""
    from transformers import FalconH1Config, FalconH1ForCausalLM

    from hybridcore.bridge.config_map import hf_config_from_model
    from hybridcore.bridge.hf import hf_state_dict

    ours = build_ours(config, device, dtype)
    fields = {k: v for k, v in hf_config_from_model(config).items() if k not in ("architectures", "model_type")}
    fields["max_position_embeddings"] = config.max_seq_len
    with torch.device(device):
        peer = FalconH1ForCausalLM(FalconH1Config(**fields, attn_implementation="sdpa"))
    peer.to(dtype).eval()
    result = peer.load_state_dict(hf_state_dict(ours), strict=False)
    if result.unexpected_keys or set(result.missing_keys) - {"lm_head.weight"}:
        raise RuntimeError(f"weights do not line up with transformers' model: {result}")
    del ours
    peer.generation_config.eos_token_id = None
    peer.generation_config.pad_token_id = 0
    return peer


class Clock:
    """Timestamps, after a device sync, at the call's start, its first new token, its third and its end."""

    def __init__(self, device):
        self.device, self.marks = device, {}

    def mark(self, name):
        if torch.device(self.device).type == "cuda":
            torch.cuda.synchronize()
        self.marks[name] = time.perf_counter()


def ours_call(model, capture):
    from hybridcore.generation import stream_generate

    def call(ids, new_tokens, clock):
        clock.mark("start")
        tokens = []
        for index, token in enumerate(stream_generate(model, ids, new_tokens, capture_cuda_graph=capture)):
            tokens.append(token)
            if index in (0, 2):
                clock.mark("first" if index == 0 else "third")
        clock.mark("end")
        return torch.stack(tokens, dim=1)
    return call


def peer_call(peer):
    from transformers.generation.streamers import BaseStreamer

    class Marks(BaseStreamer):
        def __init__(self, clock):
            self.clock, self.calls = clock, 0

        def put(self, value):  # first the prompt, then each new token
            if self.calls in (1, 3):
                self.clock.mark("first" if self.calls == 1 else "third")
            self.calls += 1

        def end(self):
            pass

    def call(ids, new_tokens, clock):
        clock.mark("start")
        with torch.inference_mode():
            out = peer.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                min_new_tokens=new_tokens, do_sample=False, streamer=Marks(clock))
        clock.mark("end")
        return out[:, ids.shape[1]:]
    return call


def measure(call, ids, args) -> dict:
    batch, length = ids.shape
    new = args.new_tokens
    on_cuda = torch.device(args.device).type == "cuda"
    runs, tokens = [], None
    call(ids, new, Clock(args.device))  # warm-up: kernels autotune, caches allocate
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    for _ in range(args.repeats):
        gc.collect()
        clock = Clock(args.device)
        tokens = call(ids, new, clock)
        m = clock.marks
        runs.append({"prefill_s": m["first"] - m["start"], "decode_s": m["end"] - m["first"],
                     "steady_s": m["end"] - m["third"]})
    prefill_s = statistics.median(r["prefill_s"] for r in runs)
    decode_s = statistics.median(r["decode_s"] for r in runs)
    steady_s = statistics.median(r["steady_s"] for r in runs)
    return {"status": "ok", "prefill_s": prefill_s, "prefill_tokens_per_s": batch * length / prefill_s,
            "decode_s": decode_s, "decode_tokens_per_s": batch * (new - 1) / decode_s,
            "ms_per_decode_step": 1000 * decode_s / (new - 1),
            "steady_decode_tokens_per_s": batch * (new - 3) / steady_s,
            "peak_bytes": torch.cuda.max_memory_allocated() - before if on_cuda else None,
            "runs": runs, "row0_tokens": tokens[0].tolist()}


def run_side(args) -> dict:
    from hybridcore import ops

    logging.getLogger("transformers").setLevel(logging.ERROR)
    dtype, device = DTYPES[args.dtype], args.device
    config = model_config(args)
    if args.side == "transformers":
        from hybridcore.bench import peer_packages

        model = build_peer(config, device, dtype)
        call, extra = peer_call(model), {"peer_packages": peer_packages()}
    else:
        model = build_ours(config, device, dtype)
        capture = None if args.side == "hybridcore" else False
        call = ours_call(model, capture)
        extra = {"kernels": ops.kernels_active(torch.empty(0, device=device)),
                 "cuda_graph": torch.device(device).type == "cuda" and capture is None}
    generator = torch.Generator().manual_seed(0)
    results = {}
    for context in args.contexts:
        prompt = torch.randint(0, config.vocab_size, (max(args.batches), context), generator=generator)
        for batch in args.batches:
            ids = prompt[:batch].to(device)
            try:
                result = measure(call, ids, args)
            except torch.OutOfMemoryError:
                result = {"status": "oom"}
            gc.collect()
            if torch.device(device).type == "cuda":
                torch.cuda.empty_cache()
            results[f"{context}x{batch}"] = result
            print(f"  {args.side:<17} context {context:>6} batch {batch:>3}: {_line(result)}", flush=True)
            # after every shape: a process stopped by --side-timeout keeps what it measured
            args.side_json.write_text(json.dumps({"side": args.side, "results": results, **extra}))
    return {"side": args.side, "results": results, **extra}


def _line(result) -> str:
    if result.get("status") != "ok":
        return result.get("status", "?")
    return (f"prefill {result['prefill_tokens_per_s']:10.0f} tok/s  decode {result['decode_tokens_per_s']:9.1f} "
            f"tok/s  steady {result['steady_decode_tokens_per_s']:9.1f} tok/s")


# ---- the driver: one process per contender ------------------------------------------------------------
def sides_for(args) -> list[str]:
    on_cuda = torch.device(args.device).type == "cuda"
    sides = list(args.sides) if args.sides else [s for s in SIDES if on_cuda or s != "hybridcore_eager"]
    return [s for s in sides if not (args.no_peer and s == "transformers")]


def launch(side: str, argv: list[str], timeout: int) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "side.json"
        command = [sys.executable, str(Path(__file__).resolve()), *argv, "--side", side, "--side-json", str(out)]
        try:
            status = "ok" if subprocess.run(command, timeout=timeout).returncode == 0 else "process failed"
        except subprocess.TimeoutExpired:
            status = f"timed out after {timeout} s"
        result = json.loads(out.read_text()) if out.exists() else {"side": side}
        return {**result, "status": status}  # the shapes measured before a failure stay


def agree_tokens(a, b):
    if a is None or b is None:
        return None
    same = [x == y for x, y in zip(a, b)]
    return same.index(False) if False in same else len(same)


def compare(report: dict) -> dict:
    """Ratios to transformers for every shape both sides measured."""
    peer = report["sides"].get("transformers", {}).get("results", {})
    ratios = {}
    for side in ("hybridcore", "hybridcore_eager"):
        for shape, ours in report["sides"].get(side, {}).get("results", {}).items():
            theirs = peer.get(shape, {})
            if ours.get("status") != "ok" or theirs.get("status") != "ok":
                continue
            ratios.setdefault(shape, {})[side] = {
                "decode_speedup": ours["decode_tokens_per_s"] / theirs["decode_tokens_per_s"],
                "steady_decode_speedup": ours["steady_decode_tokens_per_s"] / theirs["steady_decode_tokens_per_s"],
                "prefill_speedup": ours["prefill_tokens_per_s"] / theirs["prefill_tokens_per_s"],
                "agree_tokens": agree_tokens(ours.get("row0_tokens"), theirs.get("row0_tokens"))}
    return ratios


def _commit() -> str | None:
    from hybridcore.bench_record import git_state

    return git_state()["git_commit"]


def versions() -> dict:
    from hybridcore.bench import versions as found

    return found()


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.side is not None:
        return run_side(args)
    on_cuda = torch.device(args.device).type == "cuda"
    report = {"benchmark": "generate", "time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "device": torch.cuda.get_device_name() if on_cuda else platform.processor() or "cpu",
              "versions": versions(), "git_commit": _commit(),
              "command": "python benchmarks/generate_bench.py " + " ".join(argv),
              "preset": args.preset, "set": args.sets, "dtype": args.dtype, "contexts": args.contexts,
              "batches": args.batches, "new_tokens": args.new_tokens, "repeats": args.repeats,
              "smoke": args.smoke, "sides": {}}
    for side in sides_for(args):
        print(f"{side}: own process", flush=True)
        report["sides"][side] = launch(side, argv, args.side_timeout)
        report["ratios"] = compare(report)
        write(report, args)  # after every contender, so a run cut short keeps what it measured
    print_summary(report)
    return report


def write(report: dict, args) -> None:
    from hybridcore.io.json_codec import write_json

    if args.smoke and args.out is None:
        return
    out = args.out or RESULTS
    if out.suffix != ".json":
        out = out / f"generate_{args.preset}_{args.dtype}_{report['time'][:19].replace(':', '')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, report, indent=1)
    report["written_to"] = str(out)


def print_summary(report: dict) -> None:
    if report["smoke"] and "written_to" not in report:
        print(json.dumps(report, indent=1))
    print(f"generate_bench {report['preset']} {report['dtype']} on {report['device']}, "
          f"{report['new_tokens']} new tokens; torch {report['versions'].get('torch')}, "
          f"transformers {report['versions'].get('transformers')}, mamba_ssm {report['versions'].get('mamba_ssm')}")
    for side, data in report["sides"].items():
        if data.get("status") != "ok":
            print(f"  {side}: {data.get('status')}")
        for shape, result in data.get("results", {}).items():
            print(f"  {side:<17} {shape:>10}: {_line(result)}")
    for shape, sides in report.get("ratios", {}).items():
        for side, r in sides.items():
            print(f"  {shape:>10} {side} / transformers: decode x{r['decode_speedup']:.2f} "
                  f"(steady x{r['steady_decode_speedup']:.2f}), prefill x{r['prefill_speedup']:.2f}, "
                  f"agree {r['agree_tokens']} tokens")
    if "written_to" in report:
        print(f"wrote {report['written_to']}")


if __name__ == "__main__":
    main()
    sys.exit(0)
