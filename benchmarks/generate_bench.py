"""Generation speed: prefill and decode tokens/s and peak memory of hybridcore.generate against
transformers' FalconH1ForCausalLM.generate on the same model (a preset's shape, small random weights,
the very same tensors copied into both), in one process.

    python benchmarks/generate_bench.py --preset falcon-h1-0.5b --contexts 4096 32768 --new-tokens 256
    python benchmarks/generate_bench.py --smoke          # CPU, tiny, prints JSON, writes nothing

Both sides are timed through their public generate, greedy, no early stop:
  prefill_s = time of generate(max_new_tokens=1)     (the prompt pass plus one token choice)
  decode_s  = time of generate(max_new_tokens=N + 1) - prefill_s   (N decode steps)
ours is measured eagerly and, on CUDA, with the decode step replayed as a CUDA graph. Peak memory is
torch.cuda.max_memory_allocated during the longer call, minus the memory held before it (weights).
`agree_tokens` is how many leading new tokens the two sides chose identically (bf16 random weights
make near-ties, so it is a sanity figure, not a test). A side that runs out of memory records "oom".
Results: JSON under benchmarks/results/ (only a real GPU run belongs there).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import logging
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import hybridcore
from hybridcore.bench import versions
from hybridcore.bridge.config_map import hf_config_from_model
from hybridcore.bridge.hf import hf_state_dict
from hybridcore.config import apply_overrides
from hybridcore.model import build_model
from hybridcore.presets import get_preset

RESULTS = Path(__file__).resolve().parent / "results"
SMOKE = dict(preset="debug", contexts=[48, 160], new_tokens=6, batch_size=2, repeats=1, dtype="fp32", device="cpu",
             sets=["layout=P-P-", "d_model=64", "d_ff=96", "mamba_n_heads=4", "mamba_d_head=16",
                   "mamba_d_state=8", "mamba_chunk_size=16", "head_dim=16", "num_heads=4", "num_kv_heads=2"])
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="falcon-h1-0.5b")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model config field")
    p.add_argument("--contexts", type=int, nargs="+", default=[4096, 32768], help="prompt lengths")
    p.add_argument("--new-tokens", type=int, default=256, help="decode steps timed")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median)")
    p.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    p.add_argument("--device", default="cuda")
    p.add_argument("--no-peer", action="store_true", help="skip transformers")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny model and contexts; prints, writes nothing")
    p.add_argument("--out", type=Path, default=None, help="JSON file or directory (default: benchmarks/results/)")
    args = p.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    return args


# ---- models -------------------------------------------------------------------------------------------
def model_config(args):
    config = apply_overrides(get_preset(args.preset), args.sets)
    return config.replace(max_seq_len=max(max(args.contexts) + args.new_tokens + 1, config.max_seq_len))


def build_ours(config, device, dtype):
    return build_model(config, device=device, dtype=dtype, seed=0).eval()


def build_peer(config, ours, device, dtype):
    """transformers' Falcon-H1 holding exactly our weights (the bridge's key map)."""
    from transformers import FalconH1Config, FalconH1ForCausalLM

    fields = {k: v for k, v in hf_config_from_model(config).items() if k not in ("architectures", "model_type")}
    fields["max_position_embeddings"] = config.max_seq_len
    with torch.device(device):
        peer = FalconH1ForCausalLM(FalconH1Config(**fields, attn_implementation="sdpa"))
    peer.to(dtype).eval()
    result = peer.load_state_dict(hf_state_dict(ours), strict=False)
    if result.unexpected_keys or set(result.missing_keys) - {"lm_head.weight"}:
        raise RuntimeError(f"weights do not line up with transformers' model: {result}")
    peer.generation_config.eos_token_id = None
    peer.generation_config.pad_token_id = 0
    return peer


# ---- timing -------------------------------------------------------------------------------------------
def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(run, device, repeats):
    """(median seconds, peak extra bytes or None, last output) of `run()`, after one warm-up run."""
    run()
    times, peak, out = [], None, None
    for _ in range(repeats):
        gc.collect()
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        sync(device)
        start = time.perf_counter()
        out = run()
        sync(device)
        times.append(time.perf_counter() - start)
        if torch.device(device).type == "cuda":
            peak = torch.cuda.max_memory_allocated() - before
    return statistics.median(times), peak, out


def measure(name, generate_fn, input_ids, args):
    """Prefill and decode figures of one side, or {"status": "oom"}."""
    batch, length = input_ids.shape
    try:
        prefill_s, prefill_peak, _ = timed(lambda: generate_fn(input_ids, 1), args.device, args.repeats)
        total_s, peak, out = timed(lambda: generate_fn(input_ids, args.new_tokens + 1), args.device, args.repeats)
    except torch.cuda.OutOfMemoryError:
        gc.collect()
        torch.cuda.empty_cache()
        return {"status": "oom"}, None
    decode_s = total_s - prefill_s
    if decode_s <= 0:  # timing noise larger than the decode itself: record no figure rather than a false one
        decode_s = decode_tok_s = step_ms = None
    else:
        decode_tok_s, step_ms = batch * args.new_tokens / decode_s, 1000 * decode_s / args.new_tokens
    print(f"  {name:<16} prefill {batch * length / prefill_s:12.0f} tok/s   "
          f"decode {decode_tok_s or float('nan'):9.1f} tok/s   peak {_gib(peak)}", flush=True)
    return {"status": "ok", "prefill_s": prefill_s, "prefill_tokens_per_s": batch * length / prefill_s,
            "decode_s": decode_s, "decode_tokens_per_s": decode_tok_s, "ms_per_decode_step": step_ms,
            "prefill_peak_bytes": prefill_peak, "peak_bytes": peak}, out[:, length:]


def _gib(value):
    return "n/a" if value is None else f"{value / 2 ** 30:.2f} GiB"


def steady_decode(model, input_ids, args) -> dict:
    """ms per decode step once the CUDA graph is captured: prefill, one captured step, then N replays."""
    from hybridcore.generation import DecodeStep, prefill

    batch, length = input_ids.shape
    with torch.inference_mode():
        caches = model.allocate_caches(batch, length + args.new_tokens + 1)
        logits = prefill(model, input_ids, caches)
        step = DecodeStep(model, caches, torch.full((batch,), length, device=input_ids.device), document=0,
                          capture_graph=True)
        logits = step(logits.argmax(-1))  # the eager warm-up, then the capture
        sync(args.device)
        start = time.perf_counter()
        for _ in range(args.new_tokens):
            logits = step(logits.argmax(-1))
        sync(args.device)
    seconds = time.perf_counter() - start
    return {"steady_ms_per_decode_step": 1000 * seconds / args.new_tokens,
            "steady_decode_tokens_per_s": batch * args.new_tokens / seconds}


def agree_tokens(a, b) -> int:
    if a is None or b is None:
        return None
    same = (a == b).all(dim=0).tolist()
    return same.index(False) if False in same else len(same)


# ---- main ---------------------------------------------------------------------------------------------
def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    dtype, device = DTYPES[args.dtype], args.device
    config = model_config(args)
    ours = build_ours(config, device, dtype)
    peer = None if args.no_peer else build_peer(config, ours, device, dtype)
    on_cuda = torch.device(device).type == "cuda"

    def ours_eager(ids, n):
        return hybridcore.generate(ours, ids, n)

    def ours_graph(ids, n):
        return hybridcore.generate(ours, ids, n, capture_cuda_graph=True)

    def transformers_generate(ids, n):
        with torch.inference_mode():
            return peer.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False)

    sides = {"hybridcore": ours_eager}
    if on_cuda:
        sides["hybridcore_graph"] = ours_graph
    if peer is not None:
        sides["transformers"] = transformers_generate
    report = {"benchmark": "generate", "time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "device": torch.cuda.get_device_name() if on_cuda else platform.processor() or "cpu",
              "versions": versions(), "preset": args.preset, "set": args.sets, "dtype": args.dtype,
              "batch_size": args.batch_size, "new_tokens": args.new_tokens, "repeats": args.repeats,
              "parameters": ours.num_parameters(), "smoke": args.smoke, "contexts": {}}
    generator = torch.Generator().manual_seed(0)
    for context in args.contexts:
        print(f"context {context} x batch {args.batch_size}, {args.new_tokens} new tokens", flush=True)
        input_ids = torch.randint(0, config.vocab_size, (args.batch_size, context), generator=generator).to(device)
        results, tokens = {}, {}
        for name, fn in sides.items():
            results[name], tokens[name] = measure(name, fn, input_ids, args)
        if on_cuda and results["hybridcore_graph"]["status"] == "ok":
            results["hybridcore_graph"].update(steady_decode(ours, input_ids, args))
        if "transformers" in tokens:
            results["agree_tokens"] = agree_tokens(tokens["hybridcore"], tokens["transformers"])
            for name in ("prefill_tokens_per_s", "decode_tokens_per_s"):
                ours_side = results.get("hybridcore_graph", results["hybridcore"])
                if ours_side["status"] == "ok" and results["transformers"]["status"] == "ok" \
                        and ours_side[name] and results["transformers"][name]:
                    results[f"speedup_{name.split('_')[0]}"] = ours_side[name] / results["transformers"][name]
        report["contexts"][str(context)] = results
        write(report, args)  # after every context, so a run cut short keeps what it measured
    return report


def write(report: dict, args) -> None:
    text = json.dumps(report, indent=2)
    if args.smoke and args.out is None:
        print(text)
        return
    out = args.out or RESULTS
    if out.suffix != ".json":
        out = out / f"generate_{args.preset}_{args.dtype}_{report['time'][:19].replace(':', '')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".tmp")
    partial.write_text(text + "\n")
    partial.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
    sys.exit(0)
