"""Where decoding spends its time, on one GPU: the host microseconds of each inference kernel against the
PyTorch ops it replaces (its twin) at a preset's decode shapes, and their GPU microseconds replayed from a
CUDA graph; and the decode step (eager and through a CUDA graph) with the split decode attention kernel
and with SDPA under each of its backends, after a prompt of --context tokens.

    python benchmarks/decode_host.py                      # falcon-h1-0.5b, 4K context, GPU
    python benchmarks/decode_host.py --smoke              # CPU, tiny: the twins and the eager step only

Eager decoding of one token per row is bound by the host's time per launch, the CUDA-graph step by the
GPU's: this is the table to read before fusing or unfusing an op. Host time: a loop of calls without a
synchronisation, divided by the calls. GPU time: a CUDA graph of --graph-calls calls replayed, divided by
the calls. The step: wall time of --steps steps after a synchronisation at both ends. One process
runs all of it (kernel timings of one shape, not a contender comparison). Writes one JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from unittest import mock

import torch

from hybridcore.bench_record import synchronize

RESULTS = Path(__file__).resolve().parent / "results"
# the decode step's attention: the split kernel, or the kernel's twin (SDPA) under each of its backends
ATTENTION = ("split_kernel", "sdpa_default", "sdpa_efficient", "sdpa_math", "sdpa_cudnn")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="falcon-h1-0.5b")
    p.add_argument("--context", type=int, default=4096, help="prompt tokens before decoding")
    p.add_argument("--steps", type=int, default=30, help="decode steps timed per configuration")
    p.add_argument("--calls", type=int, default=300, help="calls timed per op")
    p.add_argument("--graph-calls", type=int, default=50, help="calls per CUDA graph timed per op")
    p.add_argument("--smoke", action="store_true", help="CPU, tiny model, fp32: twins and the eager step")
    p.add_argument("--out", type=Path, default=None, help="JSON file or folder (default: benchmarks/results/)")
    return p.parse_args(argv)


def host_us(fn, calls: int, device) -> float:
    fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    synchronize(device)
    return elapsed / calls * 1e6


def gpu_us(fn, calls: int) -> float:
    """GPU time per call: `calls` calls captured in one CUDA graph, replayed (no host cost in between)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1e3 / (5 * calls)


def op_inputs(config, device, dtype, context: int) -> dict:
    """One decoding token's inputs of each inference op, at the config's widths."""
    from hybridcore.ops.rope import rope_tables

    def r(*shape, dt=dtype):
        return torch.randn(*shape, device=device, dtype=dt)
    conv_dim = config.d_ssm + 2 * config.mamba_n_groups * config.mamba_d_state
    angles = r(1, 1, config.rotary_dim, dt=torch.float32)
    cos, signed_sin = rope_tables(angles.cos(), angles.sin())
    keys = torch.zeros(1, config.num_kv_heads, context + 1, config.head_dim, device=device, dtype=dtype)
    kv_width = config.num_kv_heads * config.head_dim
    group = config.num_heads // config.num_kv_heads
    mask = torch.zeros(1, 1, 1, context + 1, device=device, dtype=dtype)
    return {
        "rms_norm": (r(1, 1, config.d_model), r(config.d_model), config.norm_eps, False),
        "conv_step": (r(1, conv_dim + 8)[:, :conv_dim], r(1, conv_dim, config.mamba_d_conv - 1),
                      r(conv_dim, config.mamba_d_conv), r(conv_dim), True),
        "rope_cache_write": (r(1, 1, config.num_heads * config.head_dim), r(1, 1, kv_width), r(1, 1, kv_width), cos,
                             signed_sin, 0.5, None, keys, keys.clone(), torch.tensor([context], device=device)),
        "swiglu": (r(1, 1, config.d_ff), r(1, 1, config.d_ff), 0.5),
        "decode_attention": (r(1, config.num_kv_heads, group, config.head_dim), r(*keys.shape), r(*keys.shape),
                             mask, torch.tensor([context], device=device)),
    }


def time_ops(config, device, dtype, args) -> dict:
    from hybridcore import ops
    from hybridcore.ops import triton_attention, triton_decode

    twins = {"rms_norm": ops.rms_norm_ref, "conv_step": ops.causal_conv1d_step_ref,
             "rope_cache_write": ops.rope_cache_write_ref, "swiglu": ops.swiglu_ref,
             "decode_attention": ops.decode_attention_ref}
    found = {}
    with torch.inference_mode():
        for name, inputs in op_inputs(config, device, dtype, args.context).items():
            row = {"twin_us": host_us(lambda: twins[name](*inputs), args.calls, device)}
            if device.type == "cuda":
                kernel = getattr(triton_decode, name, None) or getattr(triton_attention, name)
                row["kernel_us"] = host_us(lambda: kernel(*inputs), args.calls, device)
                row["twin_gpu_us"] = gpu_us(lambda: twins[name](*inputs), args.graph_calls)
                row["kernel_gpu_us"] = gpu_us(lambda: kernel(*inputs), args.graph_calls)
            found[name] = row
        x = torch.randn(1, 1, config.d_model, device=device, dtype=dtype)
        found["aten_mul"] = {"twin_us": host_us(lambda: x * 0.5, args.calls, device)}
    return found


@contextlib.contextmanager
def attention_context(name: str):
    """The decode step's attention: the split kernel (what a captured step runs; eager decoding ships
    sdpa_default, the cheaper launch), or its twin under one SDPA backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from hybridcore import ops

    if name == "split_kernel":
        with ops.use_kernels("on"):
            yield
        return

    backend = name.removeprefix("sdpa_")
    chosen = {"efficient": [SDPBackend.EFFICIENT_ATTENTION], "math": [SDPBackend.MATH],
              "cudnn": [SDPBackend.CUDNN_ATTENTION]}.get(backend)
    with mock.patch("hybridcore.model.attention.decode_attention", ops.decode_attention_ref), \
            (sdpa_kernel(chosen) if chosen else contextlib.nullcontext()):
        yield


def time_decode(model, device, args) -> dict:
    from hybridcore.generation.decode import DecodeStep, prefill, prompt_layout

    config = model.config
    found = {}
    backends = ATTENTION if device.type == "cuda" else ATTENTION[:2]
    graphs = (False, True) if device.type == "cuda" else (False,)
    ids = torch.randint(0, config.vocab_size, (1, args.context), generator=torch.Generator().manual_seed(0))
    ids = ids.to(device)
    for backend in backends:
        for graph in graphs:
            key = f"{backend}{'_graph' if graph else ''}"
            try:
                with torch.inference_mode(), attention_context(backend):
                    caches = model.allocate_caches(1, args.context + args.steps + 8)
                    seq_idx, positions, next_positions, document = prompt_layout(None, 1, args.context, device)
                    synchronize(device)
                    start = time.perf_counter()
                    logits = prefill(model, ids, caches, seq_idx, positions)
                    synchronize(device)
                    prefill_ms = (time.perf_counter() - start) * 1e3
                    step = DecodeStep(model, caches, next_positions, document, capture_graph=graph)
                    tokens = logits.argmax(-1)
                    for _ in range(3):
                        step(tokens)
                    synchronize(device)
                    start = time.perf_counter()
                    for _ in range(args.steps):
                        step(tokens)
                    synchronize(device)
                    found[key] = {"step_ms": (time.perf_counter() - start) / args.steps * 1e3,
                                  "prefill_ms": prefill_ms}
            except Exception as error:  # a backend that cannot run this shape: recorded, the others go on
                found[key] = {"error": f"{type(error).__name__}: {str(error)[:200]}"}
    return found


def main(argv=None) -> dict:
    from hybridcore.bench_record import environment, write_report
    from hybridcore.config import apply_overrides
    from hybridcore.model import build_model
    from hybridcore.presets import get_preset

    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = get_preset(args.preset)
    if args.smoke:
        config = apply_overrides(get_preset("debug"), ["layout=P-P-"])
        args.context, args.steps, args.calls = 16, 3, 5
    config = config.replace(max_seq_len=max(config.max_seq_len, args.context + args.steps + 8))
    model = build_model(config, device=device, dtype=dtype, seed=0).eval()
    report = {"benchmark": "decode_host", "preset": args.preset if not args.smoke else "debug",
              "context": args.context, "dtype": str(dtype).replace("torch.", ""), "smoke": args.smoke,
              "command": "python benchmarks/decode_host.py " + " ".join(sys.argv[1:] if argv is None else argv),
              **environment(device),
              "ops_host_us": time_ops(config, device, dtype, args),
              "decode": time_decode(model, device, args)}
    for name, row in report["ops_host_us"].items():
        kernel = f"kernel {row['kernel_us']:6.1f} us, " if "kernel_us" in row else ""
        gpu = (f"; GPU kernel {row['kernel_gpu_us']:6.1f} us, PyTorch ops {row['twin_gpu_us']:6.1f} us"
               if "kernel_gpu_us" in row else "")
        print(f"{name:17s} host {kernel}PyTorch ops {row['twin_us']:6.1f} us{gpu}")
    for name, row in report["decode"].items():
        print(f"decode {name:20s} " + (f"{row['step_ms']:7.2f} ms/step, prefill {row['prefill_ms']:7.1f} ms"
                                       if "step_ms" in row else row["error"]))
    write_report(report, args.out, RESULTS, f"decode_host-{report['preset']}-ctx{args.context}.json", args.smoke)
    return report


if __name__ == "__main__":
    main()
